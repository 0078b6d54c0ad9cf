// ControlNet units on the generate page (templates/index.html #controlnet-section): a control image
// (file, drop, or "Send to ControlNet" from the gallery as /?control=/images/<job>/<n>.png), the
// preprocessor and model lists from the extension's routes (/controlnet/module_list, model_list), a
// preview of the map through /controlnet/detect, the enabled units sent by generate.js's readForm
// (ControlNet.read) as the native API's `controlnet` field, and Reuse ("t2i:reuse") restoring
// their settings. The image is not in a job's settings or infotext: it has to be added again.
// A previewed map can be downloaded, or edited (MapEditor, with the mask painter's brush from
// static/brush.js) and then sent as the unit's control image with preprocessor "none".
import { $, api, blobToDataURL, el, show } from "./api.js";
import { Brush } from "./brush.js";
var UNITS = 2;
var FIELDS = ["module", "model", "weight", "guidance_start", "guidance_end", "control_mode", "resize_mode"];
var SLIDERS = ["processor_res", "threshold_a", "threshold_b"];

function field(i, name) { return $("cn" + i + "_" + name); }

var UNDO_STEPS = 30;  // snapshots of a map are small (a few hundred KB at 512 x 512)

// A unit's map on a canvas at its own pixel size, painted white (adds lines or areas) or black (takes
// them away): what the preprocessors draw, so the result is a map as good as theirs.
function MapEditor(i) {
  var self = this;
  this.i = i;
  this.canvas = field(i, "canvas");
  this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });  // undo snapshots read it back
  this.undo = [];
  this.source = null;  // the map it started from, for "Start over"
  this.brush = new Brush(this.canvas, this.ctx, {
    size: function () { return field(i, "brush").value; },
    paint: function (ctx) { ctx.strokeStyle = field(i, "black").checked ? "#000" : "#fff"; },
    start: function () { self.snapshot(); },
  });
  field(i, "brush").addEventListener("input", function () { field(i, "brush_value").textContent = field(i, "brush").value; });
  field(i, "undo").addEventListener("click", function () { self.undoStroke(); });
  field(i, "restart").addEventListener("click", function () { self.open(self.source); });
}

MapEditor.prototype.open = function (image) {
  this.source = image;
  this.canvas.width = image.naturalWidth;
  this.canvas.height = image.naturalHeight;
  this.ctx.drawImage(image, 0, 0);
  this.undo = [];
  field(this.i, "undo").disabled = true;
};

MapEditor.prototype.snapshot = function () {
  this.undo.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
  if (this.undo.length > UNDO_STEPS) this.undo.shift();
  field(this.i, "undo").disabled = false;
};

MapEditor.prototype.undoStroke = function () {
  var last = this.undo.pop();
  if (last) this.ctx.putImageData(last, 0, 0);
  var button = field(this.i, "undo"), focused = document.activeElement === button;
  button.disabled = !this.undo.length;
  if (focused && button.disabled) field(this.i, "restart").focus();  // not lost to the page's top
};

MapEditor.prototype.toDataURL = function () { return this.canvas.toDataURL("image/png"); };

// ``page``: the generate page (its init image and upload limit).
function ControlNet(section, page) {
  this.section = section;
  this.page = page;
  this.images = [];      // each unit's control image, a data URL (null: none)
  this.detail = {};      // /controlnet/module_list's module_detail: each module's sliders
  this.editors = [];
  var self = this;
  for (var i = 0; i < UNITS; i++) this.bindUnit(i);
  $("cn-add").addEventListener("click", function () { self.addUnit(); });
  document.addEventListener("t2i:reuse", function (event) { self.reuse((event.detail.job || {}).params || {}); });
  this.load();
}

ControlNet.prototype.bindUnit = function (i) {
  var self = this, drop = field(i, "drop");
  this.images[i] = null;
  field(i, "image").addEventListener("change", function () {
    var file = field(i, "image").files[0];
    if (file) self.readFile(i, file);
  });
  // A drop here is the control image, not a PNG whose settings the form should take (generate.js's drop).
  drop.addEventListener("dragover", function (event) { event.preventDefault(); event.stopPropagation(); });
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    event.stopPropagation();
    var file = Array.prototype.filter.call(event.dataTransfer.files || [], function (f) {
      return /^image\//.test(f.type);
    })[0];
    if (file) self.readFile(i, file);
  });
  field(i, "clear").addEventListener("click", function () { self.setImage(i, null); field(i, "image").value = ""; });
  field(i, "module").addEventListener("change", function () { self.showSliders(i); });
  field(i, "pixel_perfect").addEventListener("change", function () {
    field(i, "processor_res").disabled = field(i, "pixel_perfect").checked;
  });
  field(i, "preview").addEventListener("click", function () { self.preview(i); });
  this.editors[i] = new MapEditor(i);
  field(i, "edit").addEventListener("click", function () { self.editMap(i); });
  field(i, "use").addEventListener("click", function () { self.useMap(i); });
  field(i, "cancel").addEventListener("click", function () {
    self.closeEditor(i, true);
    self.status(i, "Map of unit " + i + " left as it was.");
  });
  if (field(i, "remove")) {
    field(i, "remove").addEventListener("click", function () {
      field(i, "enabled").checked = false;
      show($("cn" + i), false);
      show($("cn-add"), true);
      $("cn-add").focus();
    });
  }
};

ControlNet.prototype.addUnit = function () {
  for (var i = 1; i < UNITS; i++) {
    if ($("cn" + i).hidden) {
      show($("cn" + i), true);
      field(i, "enabled").checked = true;
      field(i, "enabled").focus();
      break;
    }
  }
  show($("cn-add"), this.hiddenUnits() > 0);
};

ControlNet.prototype.hiddenUnits = function () {
  var n = 0;
  for (var i = 0; i < UNITS; i++) if ($("cn" + i).hidden) n += 1;
  return n;
};

ControlNet.prototype.status = function (i, text) { field(i, "status").textContent = text; };

ControlNet.prototype.readFile = function (i, file) {
  var self = this, limit = this.page.config.limits.max_upload_bytes || 0;
  if (limit && file.size * 4 / 3 > limit) {  // sent base64-encoded in the JSON body
    this.status(i, file.name + " is " + Math.round(file.size / 1024) + " KB; the limit is about " +
                Math.floor(limit * 3 / 4 / 1024) + " KB.");
    return;
  }
  blobToDataURL(file).then(function (url) { self.setImage(i, url, file.name); },
                               function (error) { self.status(i, "Could not read " + file.name + ": " + error.message); });
};

ControlNet.prototype.setImage = function (i, dataUrl, name) {
  this.images[i] = dataUrl;
  if (dataUrl) field(i, "thumb").src = dataUrl; else field(i, "thumb").removeAttribute("src");
  show(field(i, "chosen"), !!dataUrl);
  this.closeEditor(i, false);
  show(field(i, "map_box"), false);
  if (dataUrl) {
    field(i, "enabled").checked = true;
    this.status(i, "Control image" + (name ? " " + name : "") + " chosen: unit " + i + " is on.");
  } else {
    this.status(i, "No control image: the init image is used, if there is one.");
  }
};

// "Send to ControlNet": an image of this server becomes unit 0's control image.
ControlNet.prototype.fromUrl = function (url) {
  var self = this;
  this.section.open = true;
  return fetch(url, { credentials: "same-origin" }).then(function (response) {
    if (!response.ok) throw new Error("the server answered " + response.status);
    return response.blob();
  }).then(blobToDataURL).then(function (dataUrl) {
    self.setImage(0, dataUrl, url.split("/").slice(-2).join("-"));
    self.section.scrollIntoView({ behavior: "smooth", block: "start" });
    field(0, "module").focus();
  }).catch(function (error) { self.status(0, "Could not load " + url + ": " + error.message); });
};

// labels: the names' UI labels in the same order (the extension's alias_names list), else the names.
function fill(select, names, keep, labels) {
  var current = select.value;
  select.replaceChildren.apply(select, keep.concat(names.filter(function (n) { return keep.indexOf(n) < 0; }))
    .map(function (name) {
      var label = labels ? labels[names.indexOf(name)] : null;
      return el("option", { value: name, text: label || name });
    }));
  if (names.indexOf(current) >= 0 || keep.indexOf(current) >= 0) select.value = current;
}

ControlNet.prototype.load = function () {
  var self = this;
  return Promise.all([api("GET", "/controlnet/module_list"), api("GET", "/controlnet/model_list"),
                      api("GET", "/controlnet/module_list?alias_names=true")])
    .then(function (answers) {
      var modules = answers[0], models = answers[1], labels = answers[2].ok ? answers[2].data.module_list : null;
      for (var i = 0; i < UNITS; i++) {
        if (modules.ok) fill(field(i, "module"), modules.data.module_list, ["none"], labels);
        if (models.ok) {
          fill(field(i, "model"), models.data.model_list, ["None"]);
          // One ControlNet on the server (the demo's): the obvious pick.
          if (models.data.model_list.length === 1 && field(i, "model").value === "None") {
            field(i, "model").value = models.data.model_list[0];
          }
        }
      }
      if (modules.ok) self.detail = modules.data.module_detail || {};
      for (var j = 0; j < UNITS; j++) self.showSliders(j);
      if (self.pendingReuse) { self.reuse(self.pendingReuse); self.pendingReuse = null; }
    }, function () { /* the page's own status shows an unreachable server */ });
};

// The module's own sliders (resolution, thresholds) with its names and defaults; the rest hidden.
ControlNet.prototype.showSliders = function (i) {
  var sliders = (this.detail[field(i, "module").value] || {}).sliders || [];
  var hasRes = sliders.length && /resolution/i.test(sliders[0].name);
  var mapped = hasRes ? sliders : [null].concat(sliders);
  SLIDERS.forEach(function (name, k) {
    var input = field(i, name), box = input.closest(".field"), slider = mapped[k];
    show(box, !!slider);
    if (!slider) return;
    box.querySelector("label").textContent = k === 0 ? "Preprocessor resolution" : slider.name;
    input.min = slider.min;
    input.max = slider.max;
    input.step = slider.step;
    if (input.getAttribute("data-module") !== field(i, "module").value) input.value = slider.value;
    input.setAttribute("data-module", field(i, "module").value);
  });
};

function number(input, fallback) {
  var value = Number(input.value);
  return input.value.trim() === "" || isNaN(value) ? fallback : value;
}

ControlNet.prototype.unit = function (i) {
  var unit = { module: field(i, "module").value, model: field(i, "model").value,
               pixel_perfect: field(i, "pixel_perfect").checked };
  FIELDS.forEach(function (name) {
    if (unit[name] === undefined) {
      var input = field(i, name);
      unit[name] = input.tagName === "SELECT" ? input.value : number(input, input.value);
    }
  });
  SLIDERS.forEach(function (name) {
    var input = field(i, name);
    if (!input.closest(".field").hidden && !input.disabled) unit[name] = number(input, -1);
  });
  if (this.images[i]) unit.image = this.images[i];
  return unit;
};

// generate.js readForm's hook: the enabled units as the request's `controlnet` list.
ControlNet.prototype.read = function (body) {
  var units = [];
  for (var i = 0; i < UNITS; i++) {
    if (!$("cn" + i).hidden && field(i, "enabled").checked) units.push(this.unit(i));
  }
  if (units.length) body.controlnet = units;
};

ControlNet.prototype.preview = function (i) {
  var self = this, unit = this.unit(i);
  var image = this.images[i] || this.page.initImage;
  if (!image) { this.status(i, "Choose a control image first."); field(i, "image").focus(); return; }
  this.status(i, "Running " + unit.module + "…");
  api("POST", "/controlnet/detect", {
    controlnet_module: unit.module, controlnet_input_images: [image],
    controlnet_processor_res: unit.processor_res === undefined ? -1 : unit.processor_res,
    controlnet_threshold_a: unit.threshold_a === undefined ? -1 : unit.threshold_a,
    controlnet_threshold_b: unit.threshold_b === undefined ? -1 : unit.threshold_b,
  }).then(function (result) {
    if (!result.ok || !result.data.images) {
      self.status(i, "Preview failed: " + (result.data.detail || result.data.error || result.status));
      return;
    }
    var url = "data:image/png;base64," + result.data.images[0];
    self.closeEditor(i, false);
    field(i, "map").src = url;
    field(i, "map_download").href = url;
    show(field(i, "map_box"), true);
    self.status(i, "The " + unit.module + " map of unit " + i + " (the job makes it again from the image).");
  }, function () { self.status(i, "Could not reach the server."); });
};

ControlNet.prototype.editMap = function (i) {
  var map = field(i, "map");
  if (!map.naturalWidth) return;  // still loading
  this.editors[i].open(map);
  show(field(i, "map_box"), false);
  show(field(i, "editor"), true);
  field(i, "brush").focus();
  this.status(i, "Editing the map of unit " + i + ": draw on it, then Use edited map.");
};

// The map shown again (after Cancel or Use), or not (a new image or preview replaces it).
ControlNet.prototype.closeEditor = function (i, showMap) {
  if (field(i, "editor").hidden) return;
  show(field(i, "editor"), false);
  if (showMap) {
    show(field(i, "map_box"), true);
    field(i, "edit").focus();
  }
};

// The edited map is the unit's control image, sent with preprocessor none: it is a map already.
ControlNet.prototype.useMap = function (i) {
  var url = this.editors[i].toDataURL();
  this.images[i] = url;
  field(i, "thumb").src = url;
  show(field(i, "chosen"), true);
  field(i, "map").src = url;
  field(i, "map_download").href = url;
  field(i, "module").value = "none";
  this.showSliders(i);
  field(i, "enabled").checked = true;
  this.closeEditor(i, true);
  this.status(i, "Unit " + i + " sends the edited map as its control image, with preprocessor none.");
};

// A <select>'s value when offered; a model named with its hash ("name [abcd1234]") by its name.
function choose(select, value) {
  if (value === null || value === undefined) return;
  var names = [String(value), String(value).replace(/ \[[0-9a-f]+\]$/, "")];
  Array.prototype.forEach.call(select.options, function (option) {
    if (names.indexOf(option.value) >= 0) select.value = option.value;
  });
}

ControlNet.prototype.reuse = function (p) {
  if (!this.detail || !Object.keys(this.detail).length) { this.pendingReuse = p; }  // lists still loading
  var units = p.controlnet || [];
  for (var i = 0; i < UNITS; i++) {
    var unit = units[i];
    field(i, "enabled").checked = !!unit;
    if (!unit) continue;
    show($("cn" + i), true);
    choose(field(i, "module"), unit.module);
    this.showSliders(i);
    choose(field(i, "model"), unit.model);
    ["weight", "guidance_start", "guidance_end"].forEach(function (name) {
      if (unit[name] !== undefined) field(i, name).value = unit[name];
    });
    choose(field(i, "control_mode"), unit.control_mode);
    choose(field(i, "resize_mode"), unit.resize_mode);
    field(i, "pixel_perfect").checked = !!unit.pixel_perfect;
    field(i, "processor_res").disabled = !!unit.pixel_perfect;
    SLIDERS.forEach(function (name) {
      if (typeof unit[name] === "number" && unit[name] >= 0) field(i, name).value = unit[name];
    });
    this.status(i, "Settings of unit " + i + " restored" +
                (this.images[i] ? "." : ": add the control image again (it is not kept with the settings)."));
  }
  if (units.length) this.section.open = true;
  show($("cn-add"), this.hiddenUnits() > 0);
};

// The section's ControlNet (null where the page has none), with a ?control=<image> link's image.
export function initControlNet(page) {
  var section = $("controlnet-section");
  if (!section) return null;
  var cn = new ControlNet(section, page);
  var params = new URLSearchParams(window.location.search), control = params.get("control");
  if (control) {
    window.history.replaceState(null, "", window.location.pathname);
    // Only this server's own images: the link must not make the page fetch anything else.
    if (/^\/images\/[^/?#]+\/[^/?#]+$/.test(control)) cn.fromUrl(control);
    else cn.status(0, "control: not an image of this server");
  }
  return cn;
}
