import { $, api, el, show } from "./api.js";
import { health, renderQueueSize } from "./health.js";
import { ACTIVE, describeTiming, hasResults } from "./job.js";

// One poll of GET /api/queue (one read of the server's queue) feeds everything that speaks of
// the queue: the header's count, the strip, the job list and the job in the result panel, so
// their numbers always agree. Fast while one of the caller's jobs is queued or running (the
// live preview's steps), slow otherwise, backing off while the server is unreachable.
var POLL_MAX_MS = 5000;  // back-off ceiling when the server is unreachable
var QUEUE_BUSY_MS = 500;
var QUEUE_IDLE_MS = 5000;
var MY_JOBS = 10;  // the newest finished jobs listed (every unfinished one is)

function QueueState() {
  this.onFailure = null;
  this.views = [];  // each takes the answer: fn(data)
  this.polls = 0;
  this.failures = 0;
  this.timer = null;
}

QueueState.prototype.refresh = function () {
  var self = this;
  window.clearTimeout(this.timer);
  api("GET", "/api/queue?limit=" + MY_JOBS).then(function (result) {
    if (!result.ok) { self.failed(result.data && result.data.error); return; }
    self.failures = 0;
    self.polls += 1;
    self.views.forEach(function (view) { view(result.data); });
    var busy = result.data.mine.some(function (job) { return ACTIVE[job.state]; });
    self.timer = window.setTimeout(function () { self.refresh(); }, busy ? QUEUE_BUSY_MS : QUEUE_IDLE_MS);
  }, function () { self.failed("Connection lost"); });
};

QueueState.prototype.failed = function (why) {
  var self = this;
  this.failures += 1;
  if (this.onFailure) this.onFailure(why);
  var wait = Math.min(POLL_MAX_MS, QUEUE_BUSY_MS * Math.pow(2, this.failures));
  this.timer = window.setTimeout(function () { self.refresh(); }, wait);
};

// The header's count and the strip: "Queue: 5 jobs queued or running · 3 ahead of your next one".
function renderQueueCounts(data) {
  renderQueueSize(data);
  var total = data.queued + data.running;
  var text = total ? "Queue: " + total + " job" + (total === 1 ? "" : "s") + " queued or running" : "Queue: empty";
  if (data.ahead !== null && data.ahead !== undefined) text += " · " + data.ahead + " ahead of your next one";
  if ($("queue-strip")) $("queue-strip").textContent = text;
}

// The caller's jobs (queued, running, done, ...) with their place, speed and time left, and
// a thumbnail once finished. "Whole queue" adds others' jobs: the server sends them without
// prompt or owner, only their place. Items are updated in place, never rebuilt, so a focused
// "Show" button keeps the keyboard focus while the list refreshes.
var RANK = { running: 0, queued: 1 };

function JobsPanel(list, page) {
  this.list = list;
  this.page = page;
  this.items = {};
  this.current = null;
  this.all = $("queue-all");
  this.last = null;
  var self = this;
  this.all.addEventListener("change", function () { if (self.last) self.render(self.last); });
}

function queueOrder(a, b) {  // running, then queued by place, then the newest finished first
  var ra = a.state in RANK ? RANK[a.state] : 2, rb = b.state in RANK ? RANK[b.state] : 2;
  if (ra !== rb) return ra - rb;
  if (ra === 1) return (a.position || 0) - (b.position || 0);
  var ta = a.finished_at || a.created_at || "", tb = b.finished_at || b.created_at || "";
  return ta < tb ? 1 : ta > tb ? -1 : 0;
}

JobsPanel.prototype.render = function (data) {
  this.last = data;
  var shown = data.mine.slice();
  if (this.all.checked) data.jobs.forEach(function (job) { if (!job.mine) shown.push(job); });
  shown.sort(queueOrder);
  var keep = {};
  shown.forEach(function (job, index) {
    var item = this.items[job.id] || (this.items[job.id] = this.create(job));
    this.update(item, job);
    if (this.list.children[index] !== item) this.list.insertBefore(item, this.list.children[index] || null);
    keep[job.id] = true;
  }, this);
  Object.keys(this.items).forEach(function (id) {
    if (!keep[id]) { this.items[id].remove(); delete this.items[id]; }
  }, this);
  show($("queue-empty"), shown.length === 0);
};

JobsPanel.prototype.create = function (job) {
  var self = this;
  var item = el("li", { class: job.mine ? "mine" : "other", "data-job": job.id },
                el("span", { class: "where" }), " ", el("span", { class: "what" }), " ",
                el("span", { class: "timing" }));
  if (job.mine) {
    var prompt = (job.params && job.params.prompt) || "";
    item.appendChild(el("button", {
      type: "button", class: "secondary small show-job", text: "Show",
      "aria-label": "Show " + (prompt.length > 60 ? prompt.slice(0, 60) + "…" : prompt),
      onclick: function () { if (item.job && self.page) self.page.track(item.job, true); } }));
  }
  return item;
};

JobsPanel.prototype.update = function (item, job) {
  item.job = job;
  item.setAttribute("data-state", job.state);
  var where = job.state === "queued" ? "queued #" + job.position
    : job.state === "running" ? "running" : job.state;
  var timing = describeTiming(job);
  if (job.state === "running" && job.progress && job.progress.total) {
    timing = "step " + job.progress.step + "/" + job.progress.total + (timing ? " · " + timing : "");
  }
  item.querySelector(".where").textContent = where;
  item.querySelector(".what").textContent = job.mine ? (job.params ? job.params.prompt : "") : "someone else's job";
  item.querySelector(".timing").textContent = timing;
  item.classList.toggle("current", job.id === this.current);
  this.thumbnail(item, job);
};

// A finished job's first image, small, before its place (the "Show" button names the job).
JobsPanel.prototype.thumbnail = function (item, job) {
  var url = hasResults(job) ? job.images[0].url : null, thumb = item.querySelector("img.thumb");
  if (!url) { if (thumb) thumb.remove(); return; }
  if (thumb && thumb.getAttribute("src") === url) return;
  if (!thumb) {
    thumb = el("img", { class: "thumb", alt: "", width: "40", height: "40", loading: "lazy", decoding: "async" });
    item.insertBefore(thumb, item.firstChild);
  }
  thumb.setAttribute("src", url);
};

JobsPanel.prototype.markCurrent = function (jobId) {
  this.current = jobId;
  Object.keys(this.items).forEach(function (id) {
    this.items[id].classList.toggle("current", id === jobId);
    if (id === jobId) this.items[id].setAttribute("aria-current", "true");
    else this.items[id].removeAttribute("aria-current");
  }, this);
};

// The generate page's queue: one poll (QueueState) whose answer every view shows, the header's
// count, the strip, the job list and the page's own job (``page``: the GeneratePage).
export function startQueue(page) {
  var queueState = new QueueState();
  var jobs = new JobsPanel($("queue-list"), page);
  health.queueOwned = true;
  queueState.views.push(renderQueueCounts, function (data) { jobs.render(data); });
  page.jobs = jobs;
  page.queue = queueState;
  if (page.jobId) jobs.markCurrent(page.jobId);
  queueState.views.push(function (data) { page.fromQueue(data); });
  queueState.onFailure = function (why) { page.connectionLost(why); };
  // Last: a mark for whoever watches the page (tests) that every view shows this poll.
  queueState.views.push(function () { $("queue-panel").setAttribute("data-polls", String(queueState.polls)); });
  queueState.refresh();
  return queueState;
}
