// The generate page's result panel: the job it shows (followed by the queue's poll), its progress,
// live preview, images and settings. Methods of GeneratePage (generate.js mixes them in), apart
// from the form's half of the page.
import { $, api, copyText, el, show } from "./api.js";
import { ACTIVE, JOB_KEY, describeState, describeTiming, hasResults, partialLabel } from "./job.js";
import * as upscaling from "./upscale.js";

export var panel = {};

// The job in the panel is brought up to date by the queue's poll (QueueState, fromQueue):
// the answer the header's count, the strip and the job list show too, so they never disagree.
// ``pinned``: the user chose this job ("Show"); ``fromQueue``: the job as the queue's poll has it.
panel.track = function (job, pinned, fromQueue) {
  this.pinned = !!pinned;
  if (job.id !== this.jobId) this.hidePreview();
  this.jobId = job.id;
  this.failures = 0;
  if (this.renderedResults !== job.id) {
    $("results").replaceChildren();
    this.renderedResults = null;
  }
  try { window.localStorage.setItem(JOB_KEY, job.id); } catch (e) { /* private mode */ }
  this.render(job, !!fromQueue);
  if (!fromQueue && ACTIVE[job.state] && this.queue) this.queue.refresh();
};

// One queue answer (GET /api/queue): the caller's running job is the one to watch, with its
// live preview, unless the user picked another to look at; else the tracked job as it is now.
panel.fromQueue = function (data) {
  var id = this.jobId, mine = data.mine || [];
  var running = mine.filter(function (job) { return job.state === "running"; })[0];
  var current = mine.filter(function (job) { return job.id === id; })[0];
  this.failures = 0;
  var submitted = this.submitted;
  var latest = submitted && submitted !== id ? mine.filter(function (job) { return job.id === submitted; })[0] : null;
  if (running && running.id !== id && !this.pinned && !(current && current.state === "running")) {
    this.track(running, false, true);
  } else if (latest && !running && !this.pinned && !(current && ACTIVE[current.state]) && !ACTIVE[latest.state]) {
    // Nothing of the caller's runs now and the job just generated is over: show it, even when it ran
    // and finished between two polls (the panel followed the job that ran before it meanwhile).
    this.track(latest, false, true);
  } else if (current) {
    this.render(current, true);
  } else if (id && this.lastJob && ACTIVE[this.lastJob.state]) {
    this.poll();  // no longer in the queue's answer (deleted, or an old one): ask for it alone
  }
};

panel.poll = function () {
  var self = this, id = this.jobId;
  if (!id) return;
  api("GET", "/api/jobs/" + encodeURIComponent(id)).then(function (result) {
    if (id !== self.jobId) return;
    if (result.status === 404) { self.forget("This job is no longer on the server."); return; }
    if (result.ok && result.data.job) self.render(result.data.job, false);
  }, function () { /* the queue's poll says when the server is unreachable */ });
};

panel.connectionLost = function (why) {
  this.failures += 1;
  if (this.lastJob && ACTIVE[this.lastJob.state]) $("job-state").textContent = (why || "Connection problem") + ", retrying…";
};

panel.forget = function (why) {
  try { window.localStorage.removeItem(JOB_KEY); } catch (e) { /* ignore */ }
  this.jobId = null;
  this.hidePreview();
  show($("cancel"), false);
  if (why) $("job-state").textContent = why;
};

panel.cancel = function () {
  var self = this, id = this.jobId;
  if (!id) return;
  $("cancel").disabled = true;
  $("job-state").textContent = "Cancelling…";
  api("POST", "/api/jobs/" + encodeURIComponent(id) + "/cancel").then(function (result) {
    $("cancel").disabled = false;
    if (result.ok && result.data.job) self.render(result.data.job, false);
    else if (!result.ok) self.showError(result.data);
    if (self.queue) self.queue.refresh();
  }, function () {
    $("cancel").disabled = false;
    self.connectionLost("Could not reach the server to cancel");
  });
};

// ``fromQueue``: the job comes from the queue's poll, whose positions the strip shows; a
// job from another answer (just queued, cancelled) shows its place with the next poll.
panel.render = function (job, fromQueue) {
  var active = !!ACTIVE[job.state];
  this.lastJob = job;
  $("job").setAttribute("data-job", job.id);
  // Screen readers hear state changes, not every step.
  if ($("job").getAttribute("data-state") !== job.state) $("job-announce").textContent = describeState(job);
  $("job").setAttribute("data-state", job.state);
  show($("job-empty"), false);
  show($("job-body"), true);
  $("job-state").textContent = describeState(job);

  var queue = $("queue-position"), place = fromQueue && job.state === "queued" && job.position;
  show(queue, !!place);
  queue.textContent = place ? "Position in queue: " + job.position : "";

  var progress = job.progress || {}, bar = $("progress");
  var total = progress.total || (job.params && job.params.steps) || 1;
  var step = job.state === "done" ? total : (progress.step || 0);
  bar.max = total;
  bar.value = step;
  bar.setAttribute("aria-valuenow", String(step));
  bar.setAttribute("aria-valuemax", String(total));
  bar.setAttribute("aria-valuetext", step + " of " + total + " steps");
  $("progress-text").textContent = Math.round(100 * step / total) + "%";

  this.renderPreview(job);
  this.renderParams(job);
  $("job-timing").textContent = describeTiming(job);
  show($("cancel"), active);
  show($("reuse"), !!job.params);
  if (this.jobs) this.jobs.markCurrent(job.id);
  if (!active) this.finish(job);
};

// Swap the preview only once the new frame has loaded, so it never flickers. Only a running
// job shows one, its own: a queued or finished job never shows another job's frame.
panel.renderPreview = function (job) {
  var box = $("preview-box"), preview = $("preview");
  if (job.state !== "running" || !job.preview_url) {
    if (job.state !== "running" || preview.getAttribute("data-job") !== job.id) this.hidePreview();
    return;
  }
  var step = (job.progress && job.progress.step) || 0;
  var url = job.preview_url + (job.preview_url.indexOf("?") < 0 ? "?" : "&") + "step=" + step;
  if (url === this.lastPreview) return;
  this.lastPreview = url;
  var loader = new Image();
  var self = this, id = job.id;
  loader.onload = function () {
    if (id !== self.jobId || self.lastJob.id !== id || self.lastJob.state !== "running") return;
    preview.src = url;
    preview.setAttribute("data-job", id);
    show(box, true);
  };
  loader.src = url;
};

panel.hidePreview = function () {
  show($("preview-box"), false);
  $("preview").removeAttribute("src");
  $("preview").removeAttribute("data-job");
  this.lastPreview = null;
};

panel.finish = function (job) {
  if (hasResults(job) && this.renderedResults !== job.id) this.renderResults(job);
};

panel.renderResults = function (job) {
  var self = this, p = job.params || {}, partial = job.state === "cancelled";
  var items = (job.images || []).map(function (image, index) {
    return { url: image.url, infotext: image.infotext, job: job.id, n: index, mine: !!job.mine, source: job,
             alt: (partial ? "Partial image " : "Generated image ") + (index + 1) + ", seed " + image.seed };
  });
  var figures = (job.images || []).map(function (image, index) {
    var download = image.url + (image.url.indexOf("?") < 0 ? "?" : "&") + "download=1";
    var figure = el("figure", { class: "result" + (partial ? " partial" : "") },
      el("a", { href: image.url, target: "_blank", rel: "noopener", class: "open-lightbox",
                "aria-label": "Open " + items[index].alt + " full size",
                onclick: function (event) {
                  if (event.ctrlKey || event.metaKey || event.shiftKey || event.button) return;  // a new tab
                  event.preventDefault();
                  self.lightbox.open(items, index, event.currentTarget);
                } },
        el("img", { src: image.url, alt: items[index].alt })),
      el("figcaption", null,
        partial ? el("span", { class: "partial-label", text: partialLabel(job) }) : null,
        el("span", { class: "meta", text: "Seed " + image.seed }),
        el("a", { class: "button secondary small", href: download, download: job.id + "-" + index + ".png",
                  text: "Download" }),
        el("button", { type: "button", class: "secondary small reuse-image", "data-index": index,
                       text: "Use this seed", onclick: function () { self.reuse(job, index); } }),
        el("button", { type: "button", class: "secondary small copy-infotext", text: "Copy parameters",
                       onclick: function (event) { copyText(image.infotext, event.currentTarget); } }),
        el("button", { type: "button", class: "secondary small send-img2img", text: "Send to img2img",
                       onclick: function () { self.sendWithSettings(job, index); } }),
        self.controlnet ? el("button", { type: "button", class: "secondary small send-controlnet",
                                        text: "Send to ControlNet",
                                        onclick: function () { self.controlnet.fromUrl(image.url); } }) : null,
        el("button", { type: "button", class: "secondary small upscale",
                       text: "Upscale ×" + upscaling.FACTOR,
                       onclick: function (event) { upscaling.into(figure, image.url, event.currentTarget); } })));
    return figure;
  });
  $("results").replaceChildren.apply($("results"), figures);
  this.renderedResults = job.id;
};

panel.renderParams = function (job) {
  var p = job.params, list = $("job-params");
  if (!p) { show(list, false); return; }
  var rows = [
    ["Prompt", p.prompt],
    ["Negative", p.negative_prompt],
    ["Size", p.width && p.height ? p.width + "×" + p.height : "model default"],
    ["Steps", p.steps],
    ["Guidance", p.guidance_scale],
    ["Sampler", p.scheduler],
    ["Seed", (job.images && job.images.length) ? job.images.map(function (i) { return i.seed; }).join(", ")
                                               : (p.seed === null || p.seed === undefined ? "random" : p.seed)],
    ["Init image", p.has_init_image ? "yes, strength " + p.strength : null],
    ["Inpaint", p.has_mask ? "mask blur " + p.mask_blur + (p.inpaint_full_res ? ", only masked" : "") : null],
    ["Outpaint", p.outpaint ? p.outpaint + " px " + p.outpaint_directions : null],
    ["Hires fix", p.enable_hr ? (p.hr_resize_x || p.hr_resize_y ? "to " + p.hr_resize_x + "×" + p.hr_resize_y
                                                                : "×" + p.hr_scale) +
                                ", " + p.hr_upscaler + ", denoising " + p.strength : null],
    ["Variation", p.subseed_strength ? "seed " + p.subseed + ", strength " + p.subseed_strength : null],
    ["Face restoration", p.restore_faces ? p.face_restorer : null],
    ["Face detail", p.face_detail ? "strength " + p.face_detail_strength : null],
    ["ControlNet", (p.controlnet || []).map(function (u) { return u.module + ", " + u.model + ", weight " + u.weight; })
      .join("; ")],
  ];
  var nodes = [];
  rows.forEach(function (row) {
    if (row[1] === null || row[1] === undefined || row[1] === "") return;
    nodes.push(el("dt", { text: row[0] }), el("dd", { text: String(row[1]) }));
  });
  list.replaceChildren.apply(list, nodes);
  show(list, true);
};
