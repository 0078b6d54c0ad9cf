// Prompt styles on the generate page (templates/_styles.html): pick styles for the
// next job, and add, edit or delete them through /api/styles. The picked names, in
// the order picked, are kept as JSON in #styles, which the generate page's readForm sends; the
// server applies them. User data goes into the page only as textContent and values.
import { $, api, show } from "./api.js";

var PLACEHOLDER = "{prompt}";


// What a style does to a text, as the server applies it (app/engine/styles.py merge_prompt):
// only for the preview; the server is what applies styles to a job.
function merge(style, text) {
  if (style.indexOf(PLACEHOLDER) >= 0) return style.split(PLACEHOLDER).join(text);
  return [text.trim(), style.trim()].filter(Boolean).join(", ");
}

function Styles() {
  this.box = $("styles-box");
  this.styles = [];   // as /api/styles lists them
  this.picked = [];   // names, in the order picked
  var self = this;
  $("styles-manage").addEventListener("click", function () { self.toggleEditor(); });
  $("style-pick").addEventListener("change", function () { self.edit($("style-pick").value); });
  ["style-name", "style-prompt", "style-negative"].forEach(function (id) {
    $(id).addEventListener("input", function () { self.preview(); });
  });
  $("prompt").addEventListener("input", function () { self.showPicked(); self.preview(); });
  $("style-save").addEventListener("click", function () { self.save(); });
  $("style-delete").addEventListener("click", function () { self.remove(); });
  $("styles-editor").addEventListener("keydown", function (event) {
    if (event.key === "Escape") { self.toggleEditor(false); $("styles-manage").focus(); }
  });
  // Reused settings (generate.js's "t2i:reuse" event) put a job's prompt back as it ran, styles
  // already applied: picking them again would apply them twice, so the picks are cleared.
  document.addEventListener("t2i:reuse", function () {
    if (self.picked.length) {
      self.picked = [];
      self.render();
    }
  });
  this.load();
}

Styles.prototype.load = function (editName) {
  var self = this;
  return api("GET", "/api/styles").then(function (result) {
    if (!result.ok) return;
    self.styles = result.data.styles || [];
    var names = self.styles.map(function (s) { return s.name; });
    self.picked = self.picked.filter(function (name) { return names.indexOf(name) >= 0; });
    self.render();
    if (editName !== undefined) self.edit(editName);
  }, function () { /* the page's own status shows an unreachable server */ });
};

Styles.prototype.find = function (name) {
  for (var i = 0; i < this.styles.length; i++) if (this.styles[i].name === name) return this.styles[i];
  return null;
};

Styles.prototype.render = function () {
  var self = this, list = $("style-choices"), pick = $("style-pick");
  var boxes = this.styles.map(function (style, index) {
    var id = "style-choice-" + index;
    var input = document.createElement("input");
    input.type = "checkbox";
    input.id = id;
    input.value = style.name;
    input.checked = self.picked.indexOf(style.name) >= 0;
    input.addEventListener("change", function () { self.toggle(style.name, input.checked); });
    var label = document.createElement("label");
    label.className = "style-choice";
    label.htmlFor = id;
    label.appendChild(input);
    label.appendChild(document.createTextNode(" " + style.name));
    return label;
  });
  list.replaceChildren.apply(list, boxes);
  show($("styles-empty"), !this.styles.length);
  var current = pick.value;
  var options = [new Option("New style", "")].concat(this.styles.map(function (s) { return new Option(s.name, s.name); }));
  pick.replaceChildren.apply(pick, options);
  pick.value = this.find(current) ? current : "";
  this.sync();
};

Styles.prototype.toggle = function (name, on) {
  this.picked = this.picked.filter(function (n) { return n !== name; });
  if (on) this.picked.push(name);
  this.sync();
};

Styles.prototype.sync = function () {
  $("styles").value = JSON.stringify(this.picked);
  this.showPicked();
};

// What the picked styles make of the prompt now in the form.
Styles.prototype.showPicked = function () {
  var node = $("styles-picked"), self = this;
  if (!this.picked.length) { show(node, false); return; }
  var prompt = $("prompt").value, negative = $("negative_prompt").value;
  this.picked.forEach(function (name) {
    var style = self.find(name);
    if (style) { prompt = merge(style.prompt, prompt); negative = merge(style.negative_prompt, negative); }
  });
  node.textContent = "Runs as: " + (prompt || "(empty)") + (negative ? " — negative: " + negative : "");
  show(node, true);
};

Styles.prototype.toggleEditor = function (open) {
  var editor = $("styles-editor");
  open = open === undefined ? editor.hidden : open;
  show(editor, open);
  $("styles-manage").setAttribute("aria-expanded", open ? "true" : "false");
  if (open) { this.edit($("style-pick").value); $("style-pick").focus(); }
};

Styles.prototype.edit = function (name) {
  var style = this.find(name);
  $("style-pick").value = style ? style.name : "";
  $("style-name").value = style ? style.name : "";
  $("style-prompt").value = style ? style.prompt : "";
  $("style-negative").value = style ? style.negative_prompt : "";
  $("style-delete").disabled = !style;
  this.message("", "");
  this.preview();
};

Styles.prototype.preview = function () {
  var sample = $("prompt").value.trim() || "a fox";
  var text = $("style-prompt").value, negative = $("style-negative").value;
  var line = "Preview: \u201c" + sample + "\u201d becomes \u201c" + merge(text, sample) + "\u201d";
  if (negative.trim()) line += "; the negative prompt gets \u201c" + merge(negative, "") + "\u201d";
  $("style-preview").textContent = line + ".";
};

Styles.prototype.message = function (error, note) {
  $("style-error").textContent = error;
  show($("style-error"), !!error);
  $("style-note").textContent = note;
  show($("style-note"), !!note);
};

Styles.prototype.save = function () {
  var self = this, name = $("style-name").value.trim();
  if (!name) { this.message("name: give the style a name", ""); $("style-name").focus(); return; }
  var old = $("style-pick").value;
  var body = { prompt: $("style-prompt").value, negative_prompt: $("style-negative").value };
  api("PUT", "/api/styles/" + encodeURIComponent(name), body).then(function (result) {
    if (!result.ok) { self.message(result.data.error || "Could not save the style.", ""); return; }
    // A renamed style: the old name goes, the picked list follows the new one.
    var renamed = old && old !== name;
    var next = renamed ? api("DELETE", "/api/styles/" + encodeURIComponent(old)) : Promise.resolve();
    return next.then(function () {
      if (renamed) self.picked = self.picked.map(function (n) { return n === old ? name : n; });
      return self.load(name);
    }).then(function () {
      self.message("", (result.data.created ? "Added " : "Saved ") + name + ".");
    });
  }, function () { self.message("Could not reach the server.", ""); });
};

Styles.prototype.remove = function () {
  var self = this, name = $("style-pick").value;
  if (!name) return;
  api("DELETE", "/api/styles/" + encodeURIComponent(name)).then(function (result) {
    if (!result.ok) { self.message(result.data.error || "Could not delete the style.", ""); return; }
    return self.load("").then(function () {
      self.message("", "Deleted " + name + ".");
      $("style-pick").focus();
    });
  }, function () { self.message("Could not reach the server.", ""); });
};

export function initStyles() {
  if ($("styles-box") && $("prompt")) new Styles();
}
