// The generate form is the request: its controls named by the request's field names (the page
// config's ``fields``, from the request type) are read and written from that list, typed by the
// input, so a new field needs only its input in templates/index.html. Controls in a disabled
// fieldset (a mode that does not apply: data-mode) drop out, as in a form submission. The
// widgets that are not one named box (the sampler's two selects, the mask, ...) are the page's.
import { $ } from "./api.js";
export function namedControls(form, fields) {
  return Array.prototype.filter.call(form.elements, function (control) {
    return control.name && fields.indexOf(control.name) >= 0 && control.type !== "file";
  });
}

// A control's value as the request takes it: numbers for number and range boxes (and for a select
// whose field's default is a number), true/false for a checkbox, nothing for an empty box.
export function controlValue(control, defaults) {
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

export function readFields(form, fields, defaults) {
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
export function fillFields(form, fields, params, defaults) {
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
    var input = $(output.htmlFor.value);
    if (input) output.textContent = input.value;
  });
  changed.forEach(function (control) {
    for (var node = control.closest("details"); node; node = node.parentElement.closest("details")) node.open = true;
  });
  return namedControls(form, fields);
}

// The form's sampler and schedule type as the request's one string ("DPM++ 2M Karras"; Automatic: the name).
export function samplerValue() {
  var schedule = $("schedule_type").value;
  return $("scheduler").value + (schedule && schedule !== "Automatic" ? " " + schedule : "");
}

// Set both selects from a request's string: the longest sampler name it starts with, then the schedule.
export function setSampler(value) {
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
