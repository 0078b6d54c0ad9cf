// Form page and header status for the text-to-image web app.
// Plain browser JavaScript, no build step. User data only ever goes into the
// page through textContent and attributes, never as markup.
(function () {
  "use strict";

  var POLL_MS = 500;            // job polling while queued or running
  var POLL_MAX_MS = 5000;       // back-off ceiling when the server is unreachable
  var HEALTH_LOADING_MS = 2000; // health polling while the model loads
  var HEALTH_READY_MS = 10000;  // then only for the queue size in the header
  var JOB_KEY = "t2i.currentJob";
  var ACTIVE = { queued: true, running: true };
  var STATE_LABEL = { loading: "loading…", ready: "ready", failed: "failed" };

  function $(id) { return document.getElementById(id); }

  // Build an element: el("a", {href: url, class: "x"}, "text", child, ...)
  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = String(value);
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function show(node, visible) { if (node) node.hidden = !visible; }

  function goToLogin() {
    var next = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(next));
  }

  // One JSON call. Resolves to {ok, status, data}; data always has the error
  // shape on failure, even when a proxy (ngrok, Colab) answered with HTML.
  function api(method, url, body) {
    // The header keeps free ngrok's browser-warning page out of API answers.
    var options = { method: method, credentials: "same-origin",
                    headers: { Accept: "application/json", "ngrok-skip-browser-warning": "1" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      if (response.status === 401) { goToLogin(); }
      return response.text().then(function (text) {
        var data = null;
        try { data = JSON.parse(text); } catch (e) { data = null; }
        if (!data || typeof data !== "object") {
          data = { ok: false, status: response.status, field: null, value: null,
                   error: "The server answered " + response.status + " " + (response.statusText || "") +
                          " instead of JSON." };
        }
        return { ok: response.ok && data.ok !== false, status: response.status, data: data };
      });
    });
  }

  function pageConfig() {
    var node = $("page-config");
    if (!node) return { defaults: {}, limits: {} };
    try { return JSON.parse(node.textContent); } catch (e) { return { defaults: {}, limits: {} }; }
  }

  // ---------------------------------------------------------------- health
  var health = { state: null, onReady: [] };

  function renderHealth(data) {
    var state = data.model_state || "loading";
    var status = $("model-status");
    if (status) status.setAttribute("data-state", state);
    if ($("model-state")) $("model-state").textContent = STATE_LABEL[state] || state;
    if ($("model-name") && data.model) $("model-name").textContent = data.model;
    var queue = data.queue || {};
    var waiting = (queue.queued || 0) + (queue.running || 0);
    if ($("queue-size")) $("queue-size").textContent = waiting ? "· " + waiting + " in queue" : "";
    show($("model-loading"), state === "loading");
    show($("model-failed"), state === "failed");
    var message = data.model_error || data.error;
    if ($("model-error")) $("model-error").textContent = state === "failed" && message ? ": " + message : "";
    if (state === "ready" && health.state !== "ready") {
      health.onReady.forEach(function (fn) { fn(data); });
    }
    health.state = state;
  }

  function pollHealth() {
    api("GET", "/api/health").then(function (result) {
      if (result.ok) renderHealth(result.data);
      var wait = health.state === "ready" ? HEALTH_READY_MS : HEALTH_LOADING_MS;
      window.setTimeout(pollHealth, wait);
    }, function () {
      window.setTimeout(pollHealth, HEALTH_READY_MS);
    });
  }

  // ------------------------------------------------------------------ form
  function GeneratePage(form) {
    this.form = form;
    this.config = pageConfig();
    this.jobId = null;
    this.timer = null;
    this.failures = 0;
    this.renderedResults = null; // job id whose images are on the page
    this.lastPreview = null;
    this.lastJob = null;
    this.touched = {};           // fields the user edited (defaults may not overwrite them)
    this.bind();
  }

  GeneratePage.prototype.bind = function () {
    var self = this;
    this.form.addEventListener("submit", function (event) { event.preventDefault(); self.submit(); });
    this.form.addEventListener("input", function (event) {
      if (event.target && event.target.id) {
        self.touched[event.target.id] = true;
        self.clearFieldError(event.target);
      }
    });
    ["prompt", "negative_prompt"].forEach(function (id) {
      $(id).addEventListener("keydown", function (event) {
        // Ctrl/Cmd+Enter submits from either prompt box (Enter alone is a new line).
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); self.submit(); }
      });
    });
    $("random-seed").addEventListener("click", function () { $("seed").value = ""; $("seed").focus(); });
    $("strength").addEventListener("input", function () { $("strength-value").textContent = $("strength").value; });
    $("init_image").addEventListener("change", function () { self.initImageChosen(); });
    $("clear-init").addEventListener("click", function () { self.clearInitImage(); });
    $("cancel").addEventListener("click", function () { self.cancel(); });
    $("reuse").addEventListener("click", function () {
      if (self.lastJob) self.reuse(self.lastJob, 0);
    });
    health.onReady.push(function (data) { self.applyDefaults(data.defaults || {}); });
  };

  // The model's native size is only exact once it has loaded.
  GeneratePage.prototype.applyDefaults = function (defaults) {
    ["width", "height"].forEach(function (name) {
      if (defaults[name] && !this.touched[name] && !this.jobId) $(name).value = defaults[name];
    }, this);
  };

  GeneratePage.prototype.note = function (text) {
    var node = $("form-note");
    node.textContent = text || "";
    show(node, !!text);
  };

  GeneratePage.prototype.clearErrors = function () {
    show($("form-error"), false);
    $("form-error").textContent = "";
    var invalid = this.form.querySelectorAll("[aria-invalid]");
    for (var i = 0; i < invalid.length; i++) this.clearFieldError(invalid[i]);
  };

  GeneratePage.prototype.clearFieldError = function (input) {
    input.removeAttribute("aria-invalid");
    var field = input.closest(".field");
    if (field) field.classList.remove("invalid");
  };

  // Show an API error (the one JSON error shape) and mark its field.
  GeneratePage.prototype.showError = function (data) {
    var box = $("form-error");
    var text = data.error || "Something went wrong.";
    // The error shape carries the offending value apart: show it, the user may not see it otherwise.
    if (data.value !== null && data.value !== undefined && text.indexOf(String(data.value)) < 0) {
      text += " (got " + data.value + ")";
    }
    box.textContent = text;
    show(box, true);
    // The request's field names come from the server (the request type), with the page config.
    var input = data.field && (this.config.fields || []).indexOf(data.field) >= 0 ? $(data.field) : null;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-errormessage", "form-error");
      var field = input.closest(".field");
      if (field) field.classList.add("invalid");
      input.focus();
    }
  };

  function numberOrNull(id, parse) {
    var raw = $(id).value.trim();
    if (raw === "") return null;
    var value = parse(raw);
    return isNaN(value) ? raw : value; // the server names a bad value; do not hide it
  }

  GeneratePage.prototype.readForm = function () {
    var body = {
      prompt: $("prompt").value,
      negative_prompt: $("negative_prompt").value,
      width: numberOrNull("width", Number),
      height: numberOrNull("height", Number),
      steps: numberOrNull("steps", Number),
      guidance_scale: numberOrNull("guidance_scale", Number),
      scheduler: $("scheduler").value,
      num_images: numberOrNull("num_images", Number),
      tiling: $("tiling").checked,
    };
    var seed = numberOrNull("seed", Number);
    if (seed !== null) body.seed = seed;
    Object.keys(body).forEach(function (key) { if (body[key] === null) delete body[key]; });
    if (this.initImage) {
      body.init_image = this.initImage;
      body.strength = Number($("strength").value);
    }
    return body;
  };

  GeneratePage.prototype.initImageChosen = function () {
    var self = this;
    var file = $("init_image").files[0];
    this.initImage = null;
    if (!file) { this.clearInitImage(); return; }
    var limit = this.config.limits.max_upload_bytes;
    // The image travels base64-encoded (4/3 of its size) inside the JSON body.
    if (limit && file.size * 4 / 3 > limit) {
      this.showError({ error: "init_image: " + file.name + " is " + Math.round(file.size / 1024) +
                      " KB; the limit is about " + Math.floor(limit * 3 / 4 / 1024) + " KB", field: "init_image" });
      $("init_image").value = "";
      return;
    }
    var reader = new FileReader();
    reader.onload = function () {
      self.initImage = reader.result;
      var thumb = $("init-thumb");
      thumb.onload = function () { self.sizeFromImage(thumb.naturalWidth, thumb.naturalHeight); };
      thumb.src = reader.result;
      show($("init-preview"), true);
      $("strength").disabled = false;
    };
    reader.onerror = function () { self.showError({ error: "Could not read " + file.name, field: "init_image" }); };
    reader.readAsDataURL(file);
  };

  // Keep the init image's aspect ratio within the limits, in multiples of 8.
  GeneratePage.prototype.sizeFromImage = function (w, h) {
    if (!w || !h) return;
    var maxW = this.config.limits.max_width || 1024, maxH = this.config.limits.max_height || 1024;
    var scale = Math.min(1, maxW / w, maxH / h);
    var step = this.config.limits.multiple_of || 8, least = this.config.limits.min_size || 64;
    $("width").value = Math.max(least, Math.floor(w * scale / step) * step);
    $("height").value = Math.max(least, Math.floor(h * scale / step) * step);
  };

  GeneratePage.prototype.clearInitImage = function () {
    this.initImage = null;
    $("init_image").value = "";
    $("init-thumb").removeAttribute("src");
    show($("init-preview"), false);
    $("strength").disabled = true;
  };

  GeneratePage.prototype.setBusy = function (busy) {
    $("generate").disabled = busy;
    $("generate").textContent = busy ? "Working…" : "Generate";
  };

  GeneratePage.prototype.submit = function () {
    var self = this;
    if ($("generate").disabled) return;
    this.clearErrors();
    this.note("");
    if (!$("prompt").value.trim()) {
      this.showError({ error: "prompt: write what the image should show", field: "prompt" });
      return;
    }
    // A number box with text in it reads as empty: say so instead of silently using the default.
    var bad = ["width", "height", "steps", "guidance_scale", "seed", "num_images"].filter(function (id) {
      return $(id).validity && $(id).validity.badInput;
    })[0];
    if (bad) {
      this.showError({ error: bad + ": must be a number", field: bad });
      return;
    }
    this.setBusy(true);
    api("POST", "/api/jobs", this.readForm()).then(function (result) {
      if (!result.ok || !result.data.job) {
        self.setBusy(false);
        self.showError(result.data);
        return;
      }
      self.track(result.data.job);
      // On a phone the result panel sits under the form: bring it into view.
      if (window.matchMedia("(max-width: 899px)").matches) {
        $("job").scrollIntoView({ behavior: "smooth", block: "start" });
      }
    }, function () {
      self.setBusy(false);
      self.showError({ error: "Could not reach the server. Is it still running?" });
    });
  };

  // ------------------------------------------------------------------ jobs
  GeneratePage.prototype.track = function (job) {
    window.clearTimeout(this.timer);
    this.jobId = job.id;
    this.failures = 0;
    this.lastPreview = null;
    if (this.renderedResults !== job.id) {
      $("results").replaceChildren();
      this.renderedResults = null;
    }
    try { window.localStorage.setItem(JOB_KEY, job.id); } catch (e) { /* private mode */ }
    this.render(job);
    if (ACTIVE[job.state]) this.schedule(POLL_MS);
  };

  GeneratePage.prototype.schedule = function (wait) {
    var self = this;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(function () { self.poll(); }, wait);
  };

  GeneratePage.prototype.poll = function () {
    var self = this, id = this.jobId;
    if (!id) return;
    api("GET", "/api/jobs/" + encodeURIComponent(id)).then(function (result) {
      if (id !== self.jobId) return;
      if (result.status === 404) { self.forget("This job is no longer on the server."); return; }
      if (!result.ok || !result.data.job) { self.retry(result.data.error); return; }
      self.failures = 0;
      self.render(result.data.job);
      if (ACTIVE[result.data.job.state]) self.schedule(POLL_MS);
    }, function () {
      if (id === self.jobId) self.retry("Connection lost");
    });
  };

  GeneratePage.prototype.retry = function (why) {
    this.failures += 1;
    $("job-state").textContent = (why || "Connection problem") + ", retrying…";
    this.schedule(Math.min(POLL_MAX_MS, POLL_MS * Math.pow(2, this.failures)));
  };

  GeneratePage.prototype.forget = function (why) {
    try { window.localStorage.removeItem(JOB_KEY); } catch (e) { /* ignore */ }
    this.jobId = null;
    this.setBusy(false);
    show($("cancel"), false);
    if (why) $("job-state").textContent = why;
  };

  GeneratePage.prototype.cancel = function () {
    var self = this, id = this.jobId;
    if (!id) return;
    $("cancel").disabled = true;
    $("job-state").textContent = "Cancelling…";
    api("POST", "/api/jobs/" + encodeURIComponent(id) + "/cancel").then(function (result) {
      $("cancel").disabled = false;
      if (result.ok && result.data.job) self.render(result.data.job);
      else if (!result.ok) self.showError(result.data);
      self.schedule(POLL_MS);
    }, function () {
      $("cancel").disabled = false;
      self.retry("Could not reach the server to cancel");
    });
  };

  function describeState(job) {
    var progress = job.progress || {};
    switch (job.state) {
      case "queued":
        return "Queued: waiting for the model to be free";
      case "running":
        return progress.total ? "Generating: step " + progress.step + " of " + progress.total : "Starting…";
      case "done": {
        var n = (job.images || []).length;
        var secs = seconds(job.started_at, job.finished_at);
        return "Done: " + n + " image" + (n === 1 ? "" : "s") + (secs !== null ? " in " + secs.toFixed(1) + " s" : "");
      }
      case "failed": return "Failed: " + (job.error || "unknown error");
      case "cancelled": return "Cancelled";
      default: return String(job.state);
    }
  }

  function seconds(start, end) {
    var a = Date.parse(start), b = Date.parse(end);
    return isNaN(a) || isNaN(b) ? null : Math.max(0, (b - a) / 1000);
  }

  GeneratePage.prototype.render = function (job) {
    var active = !!ACTIVE[job.state];
    this.lastJob = job;
    // Screen readers hear state changes, not every step.
    if ($("job").getAttribute("data-state") !== job.state) $("job-announce").textContent = describeState(job);
    $("job").setAttribute("data-state", job.state);
    show($("job-empty"), false);
    show($("job-body"), true);
    $("job-state").textContent = describeState(job);

    var queue = $("queue-position");
    show(queue, job.state === "queued" && !!job.position);
    queue.textContent = job.position ? "Position in queue: " + job.position : "";

    var progress = job.progress || {}, bar = $("progress");
    var total = progress.total || (job.params && job.params.steps) || 1;
    var step = job.state === "done" ? total : (progress.step || 0);
    bar.max = total;
    bar.value = step;
    bar.setAttribute("aria-valuenow", String(step));
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuetext", step + " of " + total + " steps");
    $("progress-text").textContent = Math.round(100 * step / total) + "%";

    this.renderPreview(job, active);
    this.renderParams(job);
    show($("cancel"), active);
    show($("reuse"), !!job.params);
    this.setBusy(active);
    if (!active) this.finish(job);
  };

  // Swap the preview only once the new frame has loaded, so it never flickers.
  GeneratePage.prototype.renderPreview = function (job, active) {
    var box = $("preview-box"), preview = $("preview");
    if (!active || !job.preview_url) {
      if (!active) show(box, false);
      return;
    }
    var step = (job.progress && job.progress.step) || 0;
    var url = job.preview_url + (job.preview_url.indexOf("?") < 0 ? "?" : "&") + "step=" + step;
    if (url === this.lastPreview) return;
    this.lastPreview = url;
    var loader = new Image();
    var self = this, id = job.id;
    loader.onload = function () {
      if (id !== self.jobId || !ACTIVE[self.lastJob.state]) return;
      preview.src = url;
      show(box, true);
    };
    loader.src = url;
  };

  GeneratePage.prototype.finish = function (job) {
    window.clearTimeout(this.timer);
    this.setBusy(false);
    if (job.state === "done" && this.renderedResults !== job.id) this.renderResults(job);
  };

  GeneratePage.prototype.renderResults = function (job) {
    var self = this, p = job.params || {};
    var figures = (job.images || []).map(function (image, index) {
      var download = image.url + (image.url.indexOf("?") < 0 ? "?" : "&") + "download=1";
      return el("figure", { class: "result" },
        el("a", { href: image.url, target: "_blank", rel: "noopener" },
          el("img", { src: image.url, alt: "Generated image " + (index + 1) + ", seed " + image.seed,
                      width: p.width, height: p.height })),
        el("figcaption", null,
          el("span", { class: "meta", text: "Seed " + image.seed }),
          el("a", { class: "button secondary small", href: download, download: job.id + "-" + index + ".png",
                    text: "Download" }),
          el("button", { type: "button", class: "secondary small reuse-image", "data-index": index,
                         text: "Use this seed", onclick: function () { self.reuse(job, index); } })));
    });
    $("results").replaceChildren.apply($("results"), figures);
    this.renderedResults = job.id;
  };

  GeneratePage.prototype.renderParams = function (job) {
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
    ];
    var nodes = [];
    rows.forEach(function (row) {
      if (row[1] === null || row[1] === undefined || row[1] === "") return;
      nodes.push(el("dt", { text: row[0] }), el("dd", { text: String(row[1]) }));
    });
    list.replaceChildren.apply(list, nodes);
    show(list, true);
  };

  // Fill the form from a job's parameters, with the seed of image ``index``.
  GeneratePage.prototype.reuse = function (job, index) {
    var p = job.params || {};
    var set = function (id, value) {
      if (value === null || value === undefined) return;
      $(id).value = value;
      this.touched[id] = true;
    }.bind(this);
    set("prompt", p.prompt);
    set("negative_prompt", p.negative_prompt || "");
    set("width", p.width);
    set("height", p.height);
    set("steps", p.steps);
    set("guidance_scale", p.guidance_scale);
    set("num_images", p.num_images);
    $("tiling").checked = !!p.tiling;
    if (p.scheduler) {
      var options = $("scheduler").options;
      for (var i = 0; i < options.length; i++) if (options[i].value === p.scheduler) $("scheduler").value = p.scheduler;
    }
    var image = (job.images || [])[index || 0];
    var seed = image ? image.seed : p.seed;
    $("seed").value = seed === null || seed === undefined ? "" : seed;
    if (p.strength) { $("strength").value = p.strength; $("strength-value").textContent = p.strength; }
    this.clearErrors();
    this.note(p.has_init_image
      ? "Settings restored. The init image is not kept: choose it again for the same result."
      : "Settings restored" + (seed !== null && seed !== undefined ? " with seed " + seed : "") + ".");
    $("prompt").focus();
    this.form.scrollIntoView({ behavior: "smooth", block: "start" });
  };

  // After a reload (phones drop tabs), pick the last job up again; a gallery
  // "Reuse settings" link arrives as /?reuse=<job id>&image=<n>.
  GeneratePage.prototype.restore = function () {
    var self = this;
    var params = new URLSearchParams(window.location.search);
    var reuseId = params.get("reuse");
    if (reuseId) {
      window.history.replaceState(null, "", window.location.pathname);
      api("GET", "/api/jobs/" + encodeURIComponent(reuseId)).then(function (result) {
        if (result.ok && result.data.job) self.reuse(result.data.job, Number(params.get("image")) || 0);
        else self.showError(result.data);
      });
      return;
    }
    var saved = null;
    try { saved = window.localStorage.getItem(JOB_KEY); } catch (e) { saved = null; }
    if (!saved) return;
    api("GET", "/api/jobs/" + encodeURIComponent(saved)).then(function (result) {
      if (result.ok && result.data.job && result.data.job.mine && !self.jobId) self.track(result.data.job);
      else if (result.status === 404) { try { window.localStorage.removeItem(JOB_KEY); } catch (e) { /* ignore */ } }
    }, function () { /* offline: nothing to restore */ });
  };

  // ------------------------------------------------------------------ queue
  // The caller's unfinished jobs, or with "whole queue" everyone's: others'
  // come without prompt or owner (the server leaves them out), only their place.
  var QUEUE_MS = 3000;

  function QueuePanel(list) {
    this.list = list;
    this.all = $("queue-all");
    var self = this;
    this.all.addEventListener("change", function () { self.refresh(); });
  }

  QueuePanel.prototype.refresh = function () {
    var self = this;
    window.clearTimeout(this.timer);
    var url = "/api/jobs?state=queued,running&limit=100" + (this.all.checked ? "&all=1" : "");
    api("GET", url).then(function (result) {
      if (result.ok) self.render(result.data.jobs);
      self.timer = window.setTimeout(function () { self.refresh(); }, QUEUE_MS);
    }, function () {
      self.timer = window.setTimeout(function () { self.refresh(); }, POLL_MAX_MS);
    });
  };

  QueuePanel.prototype.render = function (jobs) {
    jobs = jobs.slice().sort(function (a, b) {  // running first, then by place in the queue
      return (a.position || 0) - (b.position || 0);
    });
    this.list.textContent = "";
    jobs.forEach(function (job) {
      var where = job.state === "running" ? "running" : "queued #" + job.position;
      var what = job.mine ? (job.params ? job.params.prompt : "") : "someone else's job";
      this.list.appendChild(el("li", { class: job.mine ? "mine" : "other", "data-state": job.state },
                               el("span", { class: "where", text: where }), " ", el("span", { text: what })));
    }, this);
    show($("queue-empty"), jobs.length === 0);
  };
  // --------------------------------------------------------------- gallery
  // Delete buttons: DELETE /api/jobs/<id> removes the job and all its images,
  // so every tile of that job goes. (No inline handlers: the page's CSP forbids them.)
  function initGallery(root) {
    root.addEventListener("click", function (event) {
      var button = event.target.closest("[data-delete-job]");
      if (!button) return;
      var jobId = button.getAttribute("data-delete-job");
      if (!window.confirm("Delete this job and all its images? This cannot be undone.")) return;
      button.disabled = true;
      api("DELETE", "/api/jobs/" + encodeURIComponent(jobId)).then(function (result) {
        if (!result.ok) {
          button.disabled = false;
          window.alert(result.data.error || "Could not delete the job.");
          return;
        }
        root.querySelectorAll("[data-job]").forEach(function (tile) {
          if (tile.getAttribute("data-job") === jobId) tile.remove();
        });
      }, function () {
        button.disabled = false;
        window.alert("The server could not be reached; the job was not deleted.");
      });
    });
  }

  // ----------------------------------------------------------------- login
  // The password box's Show/Hide button (hidden without JavaScript, where it could not work).
  function initShowPassword(button) {
    var input = $(button.getAttribute("aria-controls"));
    show(button, true);
    button.addEventListener("click", function () {
      var showing = input.type === "password";
      input.type = showing ? "text" : "password";
      button.textContent = showing ? "Hide" : "Show";
      button.setAttribute("aria-label", (showing ? "Hide" : "Show") + " password");
      input.focus();
    });
  }

  // ------------------------------------------------------------------ start
  document.addEventListener("DOMContentLoaded", function () {
    var config = pageConfig();
    if (config.model_state) health.state = config.model_state === "ready" ? "ready" : null;
    var form = $("generate-form");
    if (form) {
      var page = new GeneratePage(form);
      window.t2iPage = page; // handy from the browser console
      page.restore();
    }
    if ($("queue-list")) new QueuePanel($("queue-list")).refresh();
    if ($("gallery")) initGallery($("gallery"));
    if ($("show-password")) initShowPassword($("show-password"));
    if ($("model-status")) pollHealth();
  });
})();
