// The header's model status and queue size, and the loading / failed banners, from GET /api/health
// (every page with the header's status: generate, gallery, extras). The generate page listens
// (health.onReady, health.onState) and, as it polls the queue itself, owns the queue count.
import { $, api, show } from "./api.js";

var HEALTH_LOADING_MS = 2000; // health polling while the model loads
var HEALTH_READY_MS = 10000;  // then only for the queue size in the header
var STATE_LABEL = { loading: "loading…", ready: "ready", failed: "failed" };

// ``queueOwned``: the page polls the queue (queue.js QueueState), whose answer sets the header's count.
export var health = { state: null, onReady: [], onState: [], timer: null, queueOwned: false };

function renderHealth(data) {
  var state = data.model_state || "loading";
  var status = $("model-status");
  if (status) status.setAttribute("data-state", state);
  if ($("model-state")) $("model-state").textContent = STATE_LABEL[state] || state;
  if ($("model-name") && data.model) $("model-name").textContent = data.model;
  // Where the page polls the queue (QueueState), the header's count comes from that poll alone.
  if (!health.queueOwned) renderQueueSize(data.queue || {});
  show($("model-loading"), state === "loading");
  // The failure's details stay in the server log: the banner's text is for visitors.
  show($("model-failed"), state === "failed");
  health.onState.forEach(function (fn) { fn(state); });
  if (state === "ready" && health.state !== "ready") {
    health.onReady.forEach(function (fn) { fn(data); });
  }
  health.state = state;
}

export function renderQueueSize(counts) {
  var waiting = (counts.queued || 0) + (counts.running || 0);
  if ($("queue-size")) $("queue-size").textContent = waiting ? "· " + waiting + " in queue" : "";
}

// One chain of polls: an early call (checkHealth) replaces the next scheduled one.
function pollHealth() {
  window.clearTimeout(health.timer);
  api("GET", "/api/health").then(function (result) {
    if (result.ok) renderHealth(result.data);
    var wait = health.state === "ready" ? HEALTH_READY_MS : HEALTH_LOADING_MS;
    window.clearTimeout(health.timer);
    health.timer = window.setTimeout(pollHealth, wait);
  }, function () {
    window.clearTimeout(health.timer);
    health.timer = window.setTimeout(pollHealth, HEALTH_READY_MS);
  });
}

// static/models.js calls this after a switch: the header names the new model at once.
export function checkHealth() { if ($("model-status")) pollHealth(); }

// ``state``: the model's state the page was rendered with (its listeners hear only changes from it).
export function startHealth(state) {
  if (state) health.state = state === "ready" ? "ready" : null;
  checkHealth();
}
