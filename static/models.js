// Model and VAE pickers of the generate page (templates/_model.html).
// A change is sent to POST /api/model, which queues the switch; the note then
// says "Loading <model>…" until GET /api/models reports it loaded (or failed).
// Jobs queued before the switch still run on the model they were queued with.
import { api, el } from "./api.js";
import { checkHealth } from "./health.js";

var POLL_MS = 1000;

export function initModelPicker() {
  var model = document.getElementById("sd-model");
  var vae = document.getElementById("sd-vae");
  var note = document.getElementById("model-switch-note");
  var refresh = document.getElementById("sd-refresh");
  if (!model || !vae || !note) return;
  var timer = null;

  function say(text, state) {
    note.textContent = text;
    note.setAttribute("data-state", state);
  }

  // The select's options as the server lists them now (after a refresh: files added since).
  function fill(select, values) {
    var have = Array.prototype.map.call(select.options, function (option) { return option.value; });
    if (have.join("\n") === values.join("\n")) return;
    select.replaceChildren.apply(select, values.map(function (value) {
      return el("option", { value: value, "data-picker": true, text: value });
    }));
  }

  function show(state) {
    if (state.models) fill(model, state.models.map(function (m) { return m.id; }));
    if (state.vaes) fill(vae, state.vaes);
    model.setAttribute("data-current", state.selected);
    vae.setAttribute("data-current", state.selected_vae);
    model.value = state.selected;
    vae.value = state.selected_vae;
    // The header names the loaded model: tell it now rather than at its next slow poll.
    checkHealth();
    if (!state.switch_allowed) {
      model.disabled = vae.disabled = true;
      if (refresh) refresh.disabled = true;
      var why = state.switch_refused || "model switching is off";  // the server's reason, as the API's 403 says it
      say(why.charAt(0).toUpperCase() + why.slice(1) + ".", "refused");
      return false;
    }
    model.disabled = vae.disabled = false;
    if (refresh) refresh.disabled = false;
    if (state.loading) {
      say("Loading " + state.loading + "…", "loading");
      return true;
    }
    if (state.state === "failed") {
      // The reason may name the server's paths: the page says only what a visitor can act on.
      say("The model could not be loaded. Choose another.", "failed");
      return false;
    }
    say("Ready: " + state.loaded + ".", "ready");
    return false;
  }

  function poll() {
    clearTimeout(timer);
    api("GET", "/api/models").then(function (result) {
      if (result.ok && show(result.data)) timer = setTimeout(poll, POLL_MS);
    }).catch(function () { timer = setTimeout(poll, POLL_MS * 3); });
  }

  function change(select, key) {
    var previous = select.getAttribute("data-current");
    var body = {};
    body[key] = select.value;
    say("Switching to " + select.value + "…", "loading");
    api("POST", "/api/model", body).then(function (result) {
      if (!result.ok) {
        select.value = previous;
        say(result.data.error || "The switch was refused.", "failed");
        return;
      }
      if (show(result.data)) timer = setTimeout(poll, POLL_MS);
    }).catch(function () {
      select.value = previous;
      say("The server could not be reached; the model was not switched.", "failed");
    });
  }

  // Refresh: the server reads its checkpoint and VAE folders again; new files join the lists.
  function reread() {
    var before = model.options.length;
    refresh.disabled = true;
    say("Looking for new model files…", "loading");
    api("POST", "/api/models/refresh").then(function (result) {
      refresh.disabled = false;
      if (!result.ok) { say(result.data.error || "The folders could not be read again.", "failed"); return; }
      var polling = show(result.data);
      if (polling) { timer = setTimeout(poll, POLL_MS); return; }
      var added = model.options.length - before;
      say(model.options.length + " checkpoint" + (model.options.length === 1 ? "" : "s") +
          (added > 0 ? " (" + added + " new)" : "") + ". Loaded: " + (result.data.loaded || "none") + ".", "ready");
    }).catch(function () {
      refresh.disabled = false;
      say("The server could not be reached; the list was not refreshed.", "failed");
    });
  }

  if (refresh) refresh.addEventListener("click", reread);
  model.addEventListener("change", function () { change(model, "model"); });
  vae.addEventListener("change", function () { change(vae, "vae"); });
  if (note.getAttribute("data-state") === "loading") poll();
}
