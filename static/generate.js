// The generate page's entry module: the form (read and written from the request's field list,
// form.js), the init image and its tools, errors at their field, and the wiring of the page's
// parts: the result panel (result_panel.js), the queue (queue.js), the prompt history, the
// pickers, ControlNet and the X/Y/Z plot. User data only ever goes into the page through
// textContent and attributes, never as markup.
import { $, api, blobToDataURL, el, pageConfig, show } from "./api.js";
import { initControlNet } from "./controlnet.js";
import { fillFields, namedControls, readFields, controlValue, samplerValue, setSampler } from "./form.js";
import { health, startHealth } from "./health.js";
import { PromptHistory } from "./history.js";
import { initPromptLines } from "./prompts.js";
import { JOB_KEY } from "./job.js";
import { Lightbox } from "./lightbox.js";
import { initLoras } from "./loras.js";
import { MaskPainter } from "./mask.js";
import { initModelPicker } from "./models.js";
import { startQueue } from "./queue.js";
import { panel } from "./result_panel.js";
import { initStyles } from "./styles.js";
import { initXYZ } from "./xyz.js";

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
  this.controlnet = null;      // the ControlNet section (controlnet.js), set at the start
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
  this.mask = new MaskPainter($("mask-canvas"), $("mask-image"));
  // The results' lightbox acts on this page: Reuse and Send fill the form in place.
  this.lightbox = new Lightbox({
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

GeneratePage.prototype.fields = function () { return this.config.fields || []; };

GeneratePage.prototype.readForm = function () {
  var body = readFields(this.form, this.fields(), this.config.defaults || {});
  // The widgets that are not one named box each:
  body.scheduler = samplerValue();
  var styles = $("styles") ? JSON.parse($("styles").value || "[]") : [];  // picked by static/styles.js
  if (styles.length) body.styles = styles;
  if (this.controlnet) this.controlnet.read(body);  // static/controlnet.js: the enabled units
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
    return blobToDataURL(blob);
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

Object.assign(GeneratePage.prototype, panel);

// ------------------------------------------------------------------ start
var page = new GeneratePage($("generate-form"));
page.controlnet = initControlNet(page);
page.xyz = initXYZ(page);
page.promptLines = initPromptLines(page);
initStyles();
initLoras();
initModelPicker();
page.restore();
startQueue(page);
startHealth(page.config.model_state);
