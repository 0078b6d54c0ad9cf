// Form page and header status for the text-to-image web app.
// Plain browser JavaScript, no build step. User data only ever goes into the
// page through textContent and attributes, never as markup.
(function () {
  "use strict";

  var POLL_MAX_MS = 5000;       // back-off ceiling when the server is unreachable
  var HEALTH_LOADING_MS = 2000; // health polling while the model loads
  var HEALTH_READY_MS = 10000;  // then only for the queue size in the header
  var JOB_KEY = "t2i.currentJob";
  var ACTIVE = { queued: true, running: true };
  var STATE_LABEL = { loading: "loading…", ready: "ready", failed: "failed" };

  function $(id) { return document.getElementById(id); }

  var T2I = window.T2I, el = T2I.el, show = T2I.show, api = T2I.api;

  function pageConfig() {
    var node = $("page-config");
    if (!node) return { defaults: {}, limits: {} };
    try { return JSON.parse(node.textContent); } catch (e) { return { defaults: {}, limits: {} }; }
  }

  // ---------------------------------------------------------------- health
  var health = { state: null, onReady: [], onState: [], timer: null };
  var queueState = null;  // the QueueState, on pages that show the queue

  function renderHealth(data) {
    var state = data.model_state || "loading";
    var status = $("model-status");
    if (status) status.setAttribute("data-state", state);
    if ($("model-state")) $("model-state").textContent = STATE_LABEL[state] || state;
    if ($("model-name") && data.model) $("model-name").textContent = data.model;
    // Where the page polls the queue (QueueState), the header's count comes from that poll alone.
    if (!queueState) renderQueueSize(data.queue || {});
    show($("model-loading"), state === "loading");
    // The failure's details stay in the server log: the banner's text is for visitors.
    show($("model-failed"), state === "failed");
    health.onState.forEach(function (fn) { fn(state); });
    if (state === "ready" && health.state !== "ready") {
      health.onReady.forEach(function (fn) { fn(data); });
    }
    health.state = state;
  }

  function renderQueueSize(counts) {
    var waiting = (counts.queued || 0) + (counts.running || 0);
    if ($("queue-size")) $("queue-size").textContent = waiting ? "· " + waiting + " in queue" : "";
  }

  // One chain of polls: an early call (T2I.checkHealth) replaces the next scheduled one.
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
  T2I.checkHealth = function () { if ($("model-status")) pollHealth(); };

  // ------------------------------------------------------------------ form
  function GeneratePage(form) {
    this.form = form;
    this.config = pageConfig();
    this.jobId = null;
    this.failures = 0;
    this.renderedResults = null; // job id whose images are on the page
    this.lastPreview = null;
    this.lastJob = null;
    this.touched = {};           // fields the user edited (defaults may not overwrite them)
    this.sending = false;        // a POST /api/jobs is on its way
    this.modelFailed = this.config.model_state === "failed";
    this.jobs = null;            // the JobsPanel, once there is one
    this.queue = null;           // the QueueState whose poll brings this page's job up to date
    this.pinned = false;         // the user chose the job shown ("Show"): it is not swapped for the running one
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
    this.form.querySelectorAll("[data-aspect]").forEach(function (button) {
      button.addEventListener("click", function () { self.aspect(button.getAttribute("data-aspect")); });
    });
    $("swap-size").addEventListener("click", function () { self.swapSize(); });
    this.shortcutHint();
    this.keepFocusInSight();
    this.history = new PromptHistory(this);
    // A PNG dropped anywhere on the form, or pasted anywhere on the page, fills the form from its settings.
    this.form.addEventListener("dragover", function (event) {
      if (hasFile(event.dataTransfer)) { event.preventDefault(); self.form.classList.add("dropping"); }
    });
    this.form.addEventListener("dragleave", function () { self.form.classList.remove("dropping"); });
    this.form.addEventListener("drop", function (event) {
      self.form.classList.remove("dropping");
      var file = firstImage(event.dataTransfer);
      if (!file || event.target === $("init_image")) return;  // the init image box takes its own drops
      event.preventDefault();
      self.fillFromPng(file);
    });
    document.addEventListener("paste", function (event) {
      var file = firstImage(event.clipboardData);
      if (file) { event.preventDefault(); self.fillFromPng(file); }
    });
    $("random-seed").addEventListener("click", function () { $("seed").value = ""; $("seed").focus(); });
    $("strength").addEventListener("input", function () { $("strength-value").textContent = $("strength").value; });
    $("face_detail_strength").addEventListener("input", function () {
      $("face_detail_strength-value").textContent = $("face_detail_strength").value;
    });
    $("init_image").addEventListener("change", function () { self.initImageChosen(); });
    $("random-subseed").addEventListener("click", function () { $("subseed").value = ""; $("subseed").focus(); });
    this.mask = new T2I.MaskPainter($("mask-canvas"), $("mask-image"));
    // The results' lightbox acts on this page: Reuse and Send fill the form in place.
    this.lightbox = new T2I.Lightbox({
      reuse: function (item) { self.reuse(item.source, item.n); },
      send: function (item, mode) { self.sendWithSettings(item.source, item.n, mode); },
      deleted: function (jobId) {
        if (self.renderedResults !== jobId) return;
        $("results").replaceChildren();
        self.renderedResults = null;
      },
      focusAfterClose: function () { $("prompt").focus(); },
    });
    $("clear-init").addEventListener("click", function () { self.clearInitImage(); });
    $("cancel").addEventListener("click", function () { self.cancel(); });
    $("reuse").addEventListener("click", function () {
      if (self.lastJob) self.reuse(self.lastJob, 0);
    });
    health.onReady.push(function (data) { self.applyDefaults(data.defaults || {}); });
    health.onState.push(function (state) { self.modelState(state); });
  };

  // The shortcut as this keyboard writes it: ⌘ on a Mac (and an iPad's keyboard).
  GeneratePage.prototype.shortcutHint = function () {
    var platform = (navigator.userAgentData && navigator.userAgentData.platform) || navigator.platform || "";
    if (/mac|iphone|ipad/i.test(platform)) $("generate-keys").querySelector("kbd").textContent = "⌘";
  };

  // The sticky prompt bar (or Generate bar, on phones) must not cover what gets the focus or
  // is scrolled to: the page's scroll padding is its height (WCAG 2.4.11, focus not obscured).
  GeneratePage.prototype.keepFocusInSight = function () {
    var bar = $("prompt-bar");
    var update = function () {
      var sticky = [bar, bar.querySelector(".generate-bar")].filter(function (node) {
        return window.getComputedStyle(node).position === "sticky";
      })[0];
      document.documentElement.style.scrollPaddingTop = sticky ? sticky.offsetHeight + 8 + "px" : "";
    };
    if (window.ResizeObserver) new ResizeObserver(update).observe(bar);
    window.addEventListener("resize", update);
    update();
  };

  // A model that failed to load cannot run anything: Generate says why it is off.
  GeneratePage.prototype.modelState = function (state) {
    this.modelFailed = state === "failed";
    show($("generate-why"), this.modelFailed);
    this.setSending(this.sending);
  };

  // The model's native size is only exact once it has loaded.
  GeneratePage.prototype.applyDefaults = function (defaults) {
    this.config.defaults = Object.assign({}, this.config.defaults, defaults);  // the aspect presets' size
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
    if (!input.hasAttribute("aria-invalid")) return;
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-errormessage");
    var message = $(input.id + "-error");
    if (message) message.remove();
    var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(function (id) {
      return id && id !== input.id + "-error";
    }).join(" ");
    if (described) input.setAttribute("aria-describedby", described);
    else input.removeAttribute("aria-describedby");
    var field = input.closest(".field");
    if (field) field.classList.remove("invalid");
  };

  // The message at the field itself (the field may be far from Generate): under the outlined
  // box, named by its aria-describedby, and the focus moved there (closed sections opened).
  GeneratePage.prototype.markField = function (input, text) {
    this.clearFieldError(input);
    var field = input.closest(".field");
    var message = el("p", { class: "field-error", id: input.id + "-error", text: text });
    if (field) { field.classList.add("invalid"); field.appendChild(message); }
    else input.insertAdjacentElement("afterend", message);
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-errormessage", message.id);
    input.setAttribute("aria-describedby",
                       ((input.getAttribute("aria-describedby") || "") + " " + message.id).trim());
    for (var node = input.closest("details"); node; node = node.parentElement.closest("details")) node.open = true;
    input.focus();
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
    var id = data.field;
    // The hires pass's denoising strength is the request's strength, in its own box when hires is on.
    if (id === "strength" && !this.initImage && $("enable_hr").checked) id = "hr_strength";
    var input = id && this.fields().indexOf(data.field) >= 0 ? $(id) : null;
    if (input) this.markField(input, text);
  };

  // ----------------------------------------------------------- field list
  // The form's controls named by the request's field names (the page config's ``fields``, from the
  // request type) are the request: a new field needs only its input in templates/index.html.
  // Controls in a disabled fieldset (a mode that does not apply) drop out, as in a form submission.
  function namedControls(form, fields) {
    return Array.prototype.filter.call(form.elements, function (control) {
      return control.name && fields.indexOf(control.name) >= 0 && control.type !== "file";
    });
  }

  // A control's value as the request takes it: numbers for number and range boxes (and for a select
  // whose field's default is a number), true/false for a checkbox, nothing for an empty box.
  function controlValue(control, defaults) {
    if (control.type === "checkbox") return control.checked;
    var raw = control.value;
    if (control.type === "number" || control.type === "range" ||
        (control.tagName === "SELECT" && typeof defaults[control.name] === "number")) {
      raw = raw.trim();
      if (raw === "") return undefined;
      var value = Number(raw);
      return isNaN(value) ? raw : value;  // the server names a bad value; do not hide it
    }
    return raw === "" ? undefined : raw;
  }

  function readFields(form, fields, defaults) {
    var body = {};
    namedControls(form, fields).forEach(function (control) {
      if (control.matches(":disabled")) return;
      var value = controlValue(control, defaults);
      if (value !== undefined) body[control.name] = value;
    });
    return body;
  }

  // Set every named control from ``params``; a field they lack takes the page's default. Returns the
  // controls set, and opens each closed section that now holds a value other than its default.
  function fillFields(form, fields, params, defaults) {
    var given = function (value) { return value !== null && value !== undefined; };
    var changed = [];
    namedControls(form, fields).forEach(function (control) {
      var name = control.name, value = given(params[name]) ? params[name] : defaults[name];
      if (control.type === "checkbox") control.checked = !!value;
      else if (control.tagName === "SELECT") {
        // A job from another server may name what this one lacks: the select keeps its value.
        if (Array.prototype.some.call(control.options, function (o) { return o.value === String(value); })) {
          control.value = String(value);
        }
      } else control.value = given(value) ? value : "";
      if (given(params[name]) && params[name] !== defaults[name]) changed.push(control);
    });
    form.querySelectorAll("output[for]").forEach(function (output) {
      var input = document.getElementById(output.htmlFor.value);
      if (input) output.textContent = input.value;
    });
    changed.forEach(function (control) {
      for (var node = control.closest("details"); node; node = node.parentElement.closest("details")) node.open = true;
    });
    return namedControls(form, fields);
  }

  GeneratePage.prototype.fields = function () { return this.config.fields || []; };

  GeneratePage.prototype.readForm = function () {
    var body = readFields(this.form, this.fields(), this.config.defaults || {});
    // The widgets that are not one named box each:
    body.scheduler = samplerValue();
    var styles = $("styles") ? JSON.parse($("styles").value || "[]") : [];  // picked by static/styles.js
    if (styles.length) body.styles = styles;
    if (T2I.controlnet) T2I.controlnet.read(body);  // static/controlnet.js: the enabled units
    if (this.initImage) {
      body.init_image = this.initImage;
      if (body.outpaint) {
        // Outpainting keeps the init image's size and adds to it: the server sizes the canvas.
        body.outpaint_directions = Array.prototype.map.call(
          this.form.querySelectorAll("[data-outpaint-side]:checked"),
          function (box) { return box.getAttribute("data-outpaint-side"); }).join(",");
        delete body.width;
        delete body.height;
      } else {
        var mask = this.mask.toDataURL();  // only when something is painted
        if (mask) body.mask = mask;
      }
    } else if (body.enable_hr) {
      var denoise = controlValue($("hr_strength"), {});
      if (denoise !== undefined) body.strength = denoise;  // A1111's denoising strength is the request's strength
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
    reader.onload = function () { self.setInitImage(reader.result); };
    reader.onerror = function () { self.showError({ error: "Could not read " + file.name, field: "init_image" }); };
    reader.readAsDataURL(file);
  };

  // The init image as a data URL (a chosen file, or a result sent here): preview,
  // size and the mask painter follow it.
  GeneratePage.prototype.setInitImage = function (dataUrl) {
    var self = this, thumb = $("init-thumb");
    this.initImage = dataUrl;
    thumb.onload = function () {
      self.sizeFromImage(thumb.naturalWidth, thumb.naturalHeight);
      self.mask.reset(dataUrl, thumb.naturalWidth, thumb.naturalHeight);
    };
    thumb.src = dataUrl;
    show($("init-preview"), true);
    show($("init-tools"), true);
    this.setMode("img2img");
  };

  // The sections of the other mode (data-mode="txt2img" or "img2img") are disabled: their fields
  // drop out of the request, and the boxes keep their values for when the mode comes back.
  GeneratePage.prototype.setMode = function (mode) {
    this.form.querySelectorAll("[data-mode]").forEach(function (node) {
      node.disabled = node.getAttribute("data-mode") !== mode;
    });
    this.hiresAvailable(mode === "txt2img");
  };

  // Hires fix is a txt2img pass: the server refuses enable_hr with an init image (AUTOMATIC1111's
  // img2img has no hires pass and ignores it). While one is set, the section is off (setMode) and says why.
  GeneratePage.prototype.hiresAvailable = function (available) {
    var section = $("hires-section");
    section.classList.toggle("off", !available);
    show($("hires-off"), !available);
    $("hires-hint").textContent = available ? "(without an init image: generate, upscale, refine)"
      : "(off while an init image is set)";
    if (available) $("enable_hr").removeAttribute("aria-describedby");
    else $("enable_hr").setAttribute("aria-describedby", "hires-off");
  };

  // "Send to img2img" and "Send to inpaint" (A1111's buttons): the job's prompt and settings, with
  // image ``index``'s seed, and the image as the init image. Hires fix stays off: it is txt2img's.
  GeneratePage.prototype.sendWithSettings = function (job, index, mode) {
    this.reuse(job, index);
    if ($("enable_hr").checked) {
      $("enable_hr").checked = false;
      $("enable_hr").dispatchEvent(new Event("change", { bubbles: true }));
    }
    return this.sendToImg2img(job.images[index].url, mode);
  };

  // An image of this server (a result, a gallery image) becomes the init image; ``mode``
  // "inpaint" opens the mask painter on it.
  GeneratePage.prototype.sendToImg2img = function (url, mode) {
    var self = this;
    this.clearErrors();
    return fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) throw new Error("the server answered " + response.status);
      return response.blob();
    }).then(function (blob) {
      try {  // the file box shows the image's name too, where the browser lets a script set it
        var transfer = new DataTransfer();
        transfer.items.add(new File([blob], url.split("/").slice(-2).join("-"), { type: blob.type || "image/png" }));
        $("init_image").files = transfer.files;
      } catch (e) { /* older browsers: the preview alone shows it */ }
      return T2I.blobToDataURL(blob);
    }).then(function (dataUrl) {
      self.setInitImage(dataUrl);
      if (mode === "inpaint") {
        $("mask-section").open = true;
        self.note("The image is the init image now: paint the area to repaint, then press Generate.");
        $("mask-section").scrollIntoView({ behavior: "smooth", block: "start" });
        $("mask-section").querySelector("summary").focus();
        return;
      }
      self.note("The image is the init image now: set the strength and press Generate.");
      $("init-preview").closest("fieldset").scrollIntoView({ behavior: "smooth", block: "start" });
      $("strength").focus();
    }).catch(function (error) {
      self.showError({ error: "Could not load " + url + " as the init image: " + error.message, field: "init_image" });
    });
  };

  // The model's own pixel count (768x768 on SD 2.1) at another aspect ratio, in
  // multiples of 8 and within the limits: 16:9 of 768x768 is 1024x576.
  GeneratePage.prototype.aspect = function (ratio) {
    var parts = ratio.split(":"), a = Number(parts[0]), b = Number(parts[1]);
    var d = this.config.defaults || {}, limits = this.config.limits || {};
    var pixels = (d.width || 768) * (d.height || 768), step = limits.multiple_of || 8;
    var w = Math.sqrt(pixels * a / b), h = pixels / w;
    var fit = Math.min(1, (limits.max_width || w) / w, (limits.max_height || h) / h);
    this.setSize(Math.round(w * fit / step) * step, Math.round(h * fit / step) * step);
  };

  GeneratePage.prototype.swapSize = function () {
    this.setSize($("height").value, $("width").value);
  };

  GeneratePage.prototype.setSize = function (w, h) {
    $("width").value = w;
    $("height").value = h;
    this.touched.width = this.touched.height = true;
    this.clearFieldError($("width"));
    this.clearFieldError($("height"));
    this.note("Size " + w + "×" + h + ".");
  };

  // Read a PNG's settings with the server's PNG Info (the A1111 endpoint) and fill the form.
  GeneratePage.prototype.fillFromPng = function (file) {
    var self = this, reader = new FileReader();
    this.clearErrors();
    reader.onload = function () {
      api("POST", "/sdapi/v1/png-info", { image: reader.result }).then(function (result) {
        // The server reads the infotext into request fields (app/engine/metadata.py request_from_infotext).
        var p = result.ok && result.data.request;
        if (!p || !p.prompt) {
          self.showError(result.ok ? { error: file.name + " holds no generation settings." } : result.data);
          return;
        }
        self.reuse({ params: p }, 0);
        self.note("Settings read from " + file.name + ".");
      }, function () { self.showError({ error: "Could not reach the server to read " + file.name }); });
    };
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
    show($("init-tools"), false);
    this.mask.reset(null);
    this.setMode("txt2img");
  };

  // Generate is off only while a request is on its way (no double submits) or
  // when the model failed; a running job never blocks queueing the next one.
  GeneratePage.prototype.setSending = function (sending) {
    this.sending = !!sending;
    $("generate").disabled = this.sending || !!this.modelFailed;
    $("generate").textContent = this.sending ? "Queuing…" : "Generate";
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
    var bad = namedControls(this.form, this.fields()).filter(function (control) {
      return !control.matches(":disabled") && control.validity && control.validity.badInput;
    })[0];
    if (bad) {
      this.showError({ error: bad.name + ": must be a number", field: bad.name });
      return;
    }
    this.setSending(true);
    api("POST", "/api/jobs", this.readForm()).then(function (result) {
      self.setSending(false);
      if (!result.ok || !result.data.job) {
        self.showError(result.data);  // a full queue says so here (the per-client limit's message)
        return;
      }
      self.submitted = result.data.job.id;  // the panel ends on it (fromQueue), however fast it runs
      self.track(result.data.job);
      self.history.add(result.data.job.params.prompt, result.data.job.params.negative_prompt);
      if (self.queue) self.queue.refresh();
      // On a phone the result panel sits under the form: bring it into view.
      if (window.matchMedia("(max-width: 899px)").matches) {
        $("job").scrollIntoView({ behavior: "smooth", block: "start" });
      }
    }, function () {
      self.setSending(false);
      self.showError({ error: "Could not reach the server. Is it still running?" });
    });
  };

  function hasFile(transfer) {
    return !!transfer && Array.prototype.indexOf.call(transfer.types || [], "Files") >= 0;
  }

  function firstImage(transfer) {
    var files = (transfer && transfer.files) || [];
    for (var i = 0; i < files.length; i++) if (/^image\//.test(files[i].type)) return files[i];
    return null;
  }

  // The form's sampler and schedule type as the request's one string ("DPM++ 2M Karras"; Automatic: the name).
  function samplerValue() {
    var schedule = $("schedule_type").value;
    return $("scheduler").value + (schedule && schedule !== "Automatic" ? " " + schedule : "");
  }

  // Set both selects from a request's string: the longest sampler name it starts with, then the schedule.
  function setSampler(value) {
    var best = "";
    Array.prototype.forEach.call($("scheduler").options, function (option) {
      var name = option.value;
      if ((value === name || value.indexOf(name + " ") === 0) && name.length > best.length) best = name;
    });
    if (!best) return;
    $("scheduler").value = best;
    var schedule = value.slice(best.length).trim() || "Automatic";
    Array.prototype.forEach.call($("schedule_type").options, function (option) {
      if (option.value.toLowerCase() === schedule.toLowerCase()) $("schedule_type").value = option.value;
    });
  }

  var copyText = T2I.copyText;  // static/api.js: shared with the gallery's menu

  // ---------------------------------------------------------------- history
  // The last 50 prompts sent from this browser (localStorage), searchable;
  // choosing one puts it, and its negative prompt, back into the form.
  var HISTORY_KEY = "t2i.promptHistory";
  var HISTORY_MAX = 50;

  function PromptHistory(page) {
    var self = this;
    this.page = page;
    $("history-toggle").addEventListener("click", function () { self.toggle(); });
    $("history-search").addEventListener("input", function () { self.render(); });
    $("history-search").addEventListener("keydown", function (event) {
      if (event.key === "Escape") { self.toggle(false); $("history-toggle").focus(); }
    });
  }

  PromptHistory.prototype.load = function () {
    try { return JSON.parse(window.localStorage.getItem(HISTORY_KEY)) || []; } catch (e) { return []; }
  };

  PromptHistory.prototype.add = function (prompt, negative) {
    if (!prompt.trim()) return;
    var items = this.load().filter(function (item) { return item.prompt !== prompt; });
    items.unshift({ prompt: prompt, negative_prompt: negative || "" });
    try { window.localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, HISTORY_MAX))); } catch (e) { /* full or private */ }
    if (!$("history").hidden) this.render();
  };

  PromptHistory.prototype.toggle = function (open) {
    open = open === undefined ? $("history").hidden : open;
    show($("history"), open);
    $("history-toggle").setAttribute("aria-expanded", String(open));
    if (open) { this.render(); $("history-search").focus(); }
  };

  PromptHistory.prototype.render = function () {
    var self = this, query = $("history-search").value.trim().toLowerCase();
    var items = this.load().filter(function (item) {
      return !query || (item.prompt + " " + item.negative_prompt).toLowerCase().indexOf(query) >= 0;
    });
    $("history-list").replaceChildren.apply($("history-list"), items.map(function (item) {
      return el("li", null, el("button", { type: "button", class: "history-item", text: item.prompt,
        onclick: function () {
          $("prompt").value = item.prompt;
          $("negative_prompt").value = item.negative_prompt;
          self.toggle(false);
          $("prompt").focus();
        } }));
    }));
    $("history-empty").textContent = query ? "No earlier prompt matches." : "No earlier prompts yet.";
    show($("history-empty"), items.length === 0);
  };

  // ------------------------------------------------------------------ jobs
  // The job in the panel is brought up to date by the queue's poll (QueueState, fromQueue):
  // the answer the header's count, the strip and the job list show too, so they never disagree.
  // ``pinned``: the user chose this job ("Show"); ``fromQueue``: the job as the queue's poll has it.
  GeneratePage.prototype.track = function (job, pinned, fromQueue) {
    this.pinned = !!pinned;
    if (job.id !== this.jobId) this.hidePreview();
    this.jobId = job.id;
    this.failures = 0;
    if (this.renderedResults !== job.id) {
      T2I.upscale.discard($("results"));
      $("results").replaceChildren();
      this.renderedResults = null;
    }
    try { window.localStorage.setItem(JOB_KEY, job.id); } catch (e) { /* private mode */ }
    this.render(job, !!fromQueue);
    if (!fromQueue && ACTIVE[job.state] && this.queue) this.queue.refresh();
  };

  // One queue answer (GET /api/queue): the caller's running job is the one to watch, with its
  // live preview, unless the user picked another to look at; else the tracked job as it is now.
  GeneratePage.prototype.fromQueue = function (data) {
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

  GeneratePage.prototype.poll = function () {
    var self = this, id = this.jobId;
    if (!id) return;
    api("GET", "/api/jobs/" + encodeURIComponent(id)).then(function (result) {
      if (id !== self.jobId) return;
      if (result.status === 404) { self.forget("This job is no longer on the server."); return; }
      if (result.ok && result.data.job) self.render(result.data.job, false);
    }, function () { /* the queue's poll says when the server is unreachable */ });
  };

  GeneratePage.prototype.connectionLost = function (why) {
    this.failures += 1;
    if (this.lastJob && ACTIVE[this.lastJob.state]) $("job-state").textContent = (why || "Connection problem") + ", retrying…";
  };

  GeneratePage.prototype.forget = function (why) {
    try { window.localStorage.removeItem(JOB_KEY); } catch (e) { /* ignore */ }
    this.jobId = null;
    this.hidePreview();
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
      if (result.ok && result.data.job) self.render(result.data.job, false);
      else if (!result.ok) self.showError(result.data);
      if (self.queue) self.queue.refresh();
    }, function () {
      $("cancel").disabled = false;
      self.connectionLost("Could not reach the server to cancel");
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
      case "failed":
        // The load failure's details are the server log's; the page says what a visitor can do.
        if (/^the model could not be loaded/.test(job.error || "")) return "Failed: " + MODEL_FAILED;
        return "Failed: " + (job.error || "unknown error");
      case "cancelled": return hasResults(job) ? "Cancelled: " + partialLabel(job) : "Cancelled";
      default: return String(job.state);
    }
  }

  // A cancelled job may keep the image of its last step (``partial: true``, images as a done job's).
  function hasResults(job) {
    return (job.state === "done" || (job.state === "cancelled" && job.partial === true)) &&
      !!(job.images && job.images.length);
  }

  // The server's reason says where the run stopped ("cancelled after step 3 of 60"); a
  // finished job's progress is not kept.
  function partialLabel(job) {
    var reason = typeof job.error === "string" ? job.error : "";
    return /^(cancelled|skipped) after step \d+ of \d+$/.test(reason) ? "partial, " + reason
                                                                     : "partial, cancelled before the end";
  }

  var MODEL_FAILED = "the model could not be loaded; the person running this app must restart it.";

  function duration(secs) {
    secs = Math.max(1, Math.round(secs));
    return secs < 60 ? secs + " s" : Math.floor(secs / 60) + " min " + (secs % 60) + " s";
  }

  // Speed and time left, as the server measures them (app/web/timing.py).
  function describeTiming(job) {
    var parts = [];
    if (job.state === "running" && job.its) parts.push(job.its.toFixed(1) + " it/s");
    if (ACTIVE[job.state] && job.eta_seconds !== null && job.eta_seconds !== undefined) {
      parts.push("about " + duration(job.eta_seconds) + " left");
    }
    if (job.state === "done" && job.its) parts.push(job.its.toFixed(1) + " it/s");
    return parts.join(" · ");
  }

  function seconds(start, end) {
    var a = Date.parse(start), b = Date.parse(end);
    return isNaN(a) || isNaN(b) ? null : Math.max(0, (b - a) / 1000);
  }

  // ``fromQueue``: the job comes from the queue's poll, whose positions the strip shows; a
  // job from another answer (just queued, cancelled) shows its place with the next poll.
  GeneratePage.prototype.render = function (job, fromQueue) {
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
  GeneratePage.prototype.renderPreview = function (job) {
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

  GeneratePage.prototype.hidePreview = function () {
    show($("preview-box"), false);
    $("preview").removeAttribute("src");
    $("preview").removeAttribute("data-job");
    this.lastPreview = null;
  };

  GeneratePage.prototype.finish = function (job) {
    if (hasResults(job) && this.renderedResults !== job.id) this.renderResults(job);
  };

  GeneratePage.prototype.renderResults = function (job) {
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
          T2I.controlnet ? el("button", { type: "button", class: "secondary small send-controlnet",
                                          text: "Send to ControlNet",
                                          onclick: function () { T2I.controlnet.fromUrl(image.url); } }) : null,
          el("button", { type: "button", class: "secondary small upscale",
                         text: "Upscale ×" + T2I.upscale.FACTOR,
                         onclick: function (event) { T2I.upscale.into(figure, image.url, event.currentTarget); } })));
      return figure;
    });
    T2I.upscale.discard($("results"));
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

  // Fill the form from a job's parameters (or a PNG's, read by the server), with the seed of image
  // ``index``: every named control from its field (fillFields), then the widgets that are not one box.
  GeneratePage.prototype.reuse = function (job, index) {
    var p = job.params || {}, d = this.config.defaults || {};
    fillFields(this.form, this.fields(), p, d).forEach(function (control) { this.touched[control.id] = true; }, this);
    if (p.scheduler) setSampler(p.scheduler);
    var image = (job.images || [])[index || 0];
    var seed = image ? image.seed : p.seed;
    $("seed").value = seed === null || seed === undefined ? "" : seed;
    if (p.enable_hr && p.strength) $("hr_strength").value = p.strength;  // the hires pass's denoising
    var sides = String(p.outpaint_directions || d.outpaint_directions || "").split(",");
    this.form.querySelectorAll("[data-outpaint-side]").forEach(function (box) {
      box.checked = sides.indexOf(box.getAttribute("data-outpaint-side")) >= 0;
    });
    this.clearErrors();
    this.note(p.has_init_image
      ? "Settings restored. The init image" + (p.has_mask ? " and the mask are" : " is") +
        " not kept: choose it again for the same result."
      : "Settings restored" + (seed !== null && seed !== undefined ? " with seed " + seed : "") + ".");
    $("prompt").focus();
    this.form.scrollIntoView({ behavior: "smooth", block: "start" });
    // The prompt is back as it ran, styles already applied: static/styles.js unpicks its styles.
    document.dispatchEvent(new CustomEvent("t2i:reuse", { detail: { job: job, index: index || 0 } }));
  };

  // After a reload (phones drop tabs), pick the last job up again; a gallery
  // "Reuse settings" link arrives as /?reuse=<job id>&image=<n>, its "Send to
  // img2img" link as /?init=/images/<job id>/<n>.png&reuse=<job id>&image=<n>
  // (the image and its settings; &mode=inpaint: Send to inpaint).
  GeneratePage.prototype.restore = function () {
    var self = this;
    var params = new URLSearchParams(window.location.search);
    var reuseId = params.get("reuse"), init = params.get("init"), mode = params.get("mode");
    var index = Number(params.get("image")) || 0;
    if (init) {
      window.history.replaceState(null, "", window.location.pathname);
      // Only this server's own images: the link must not make the page fetch anything else.
      if (!/^\/images\/[^/?#]+\/[^/?#]+$/.test(init)) {
        this.showError({ error: "init: not an image of this server", field: "init_image", value: init });
      } else if (reuseId) {
        api("GET", "/api/jobs/" + encodeURIComponent(reuseId)).then(function (result) {
          var job = result.ok && result.data.job;
          // The settings when the job's images are this one's; else the image alone.
          if (job && job.images[index] && job.images[index].url === init) self.sendWithSettings(job, index, mode);
          else self.sendToImg2img(init, mode);
        }, function () { self.sendToImg2img(init, mode); });
        return;
      } else this.sendToImg2img(init, mode);
    }
    if (reuseId) {
      window.history.replaceState(null, "", window.location.pathname);
      api("GET", "/api/jobs/" + encodeURIComponent(reuseId)).then(function (result) {
        if (result.ok && result.data.job) self.reuse(result.data.job, index);
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
  // One poll of GET /api/queue (one read of the server's queue) feeds everything that speaks of
  // the queue: the header's count, the strip, the job list and the job in the result panel, so
  // their numbers always agree. Fast while one of the caller's jobs is queued or running (the
  // live preview's steps), slow otherwise, backing off while the server is unreachable.
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
    var form = $("generate-form"), page = null;
    if (form) {
      page = new GeneratePage(form);
      window.t2iPage = page; // handy from the browser console
      page.restore();
    }
    if ($("queue-list")) {
      queueState = new QueueState();
      var jobs = new JobsPanel($("queue-list"), page || null);
      queueState.views.push(renderQueueCounts, function (data) { jobs.render(data); });
      if (page) {
        page.jobs = jobs;
        page.queue = queueState;
        if (page.jobId) jobs.markCurrent(page.jobId);
        queueState.views.push(function (data) { page.fromQueue(data); });
        queueState.onFailure = function (why) { page.connectionLost(why); };
      }
      // Last: a mark for whoever watches the page (tests) that every view shows this poll.
      queueState.views.push(function () { $("queue-panel").setAttribute("data-polls", String(queueState.polls)); });
      queueState.refresh();
    }
    if ($("show-password")) initShowPassword($("show-password"));
    if ($("model-status")) pollHealth();
  });
})();
