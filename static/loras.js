/* The LoRA picker (templates/_loras.html): lists /api/loras and inserts
   <lora:name:1> into the prompt at the cursor. Plain controls (a select and a
   button), so the keyboard and screen readers work as with any form field. */
import { api } from "./api.js";
function byId(id) { return document.getElementById(id); }

function option(value, text) {
  var el = document.createElement("option");
  el.value = value;
  el.textContent = text;
  return el;
}

// The tag at the cursor (or over the selection), with a space on either side where the text needs one.
function insertTag(prompt, name) {
  var tag = "<lora:" + name + ":1>";
  var start = prompt.selectionStart, end = prompt.selectionEnd, text = prompt.value;
  if (typeof start !== "number") { start = end = text.length; }
  var before = text.slice(0, start), after = text.slice(end);
  if (before && !/\s$/.test(before)) { tag = " " + tag; }
  if (after && !/^\s/.test(after)) { tag = tag + " "; }
  prompt.value = before + tag + after;
  var caret = before.length + tag.length;
  prompt.focus();
  prompt.setSelectionRange(caret, caret);
  prompt.dispatchEvent(new Event("input", { bubbles: true }));  // the page's own listeners see the edit
}

function show(data) {
  var select = byId("lora-select"), button = byId("lora-insert"), status = byId("lora-status");
  var loras = data.loras || [], skipped = data.skipped || [];
  select.textContent = "";
  if (!loras.length) {
    select.appendChild(option("", "No LoRAs in the LoRA folder"));
  }
  loras.forEach(function (lora) { select.appendChild(option(lora.name, lora.name)); });
  select.disabled = button.disabled = !loras.length;
  status.textContent = loras.length + (loras.length === 1 ? " LoRA" : " LoRAs") +
    (skipped.length ? "; " + skipped.length + " file" + (skipped.length === 1 ? "" : "s") + " cannot be used" : "");
  var list = byId("lora-skipped-list");
  list.textContent = "";
  skipped.forEach(function (item) {
    var li = document.createElement("li");
    li.textContent = item.path + ": " + item.error;
    list.appendChild(li);
  });
  byId("lora-skipped").hidden = !skipped.length;
}

function init() {
  var select = byId("lora-select"), button = byId("lora-insert"), prompt = byId("prompt");
  if (!select || !button || !prompt) { return; }
  button.addEventListener("click", function () {
    if (select.value) { insertTag(prompt, select.value); }
  });
  api("GET", "/api/loras")
    .then(function (result) {
      if (!result.ok) { throw new Error(result.data.error || "the LoRA list could not be read"); }
      show(result.data);
    })
    .catch(function (err) {
      select.textContent = "";
      select.appendChild(option("", "LoRA list unavailable"));
      byId("lora-status").textContent = "The LoRA list could not be read: " + err.message;
    });
}

export { init as initLoras };
