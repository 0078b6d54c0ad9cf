// The X/Y/Z plot section of the generate page (templates/_xyz.html): the form's settings
// (the generate page's readForm) plus the axes go to POST /api/xyz; the group
// is then followed at /api/groups/<id> until its grid is drawn. Errors show at their field.
import { $, api, show } from "./api.js";

var AXES = ["x", "y", "z"];

function XYZ(section, page) {
  this.section = section;
  this.page = page;
  this.groupId = null;
  this.timer = null;
  var self = this;
  $("xyz-run").addEventListener("click", function () { self.run(); });
  $("xyz-cancel").addEventListener("click", function () { self.cancel(); });
  AXES.forEach(function (axis) {
    $("xyz-" + axis + "-values").addEventListener("input", function () { self.clearErrors(); });
  });
}

XYZ.prototype.settings = function () {
  var body = { draw_legend: $("xyz-draw-legend").checked, no_fixed_seeds: $("xyz-keep-seeds").checked };
  AXES.forEach(function (axis) {
    body[axis + "_type"] = $("xyz-" + axis + "-type").value;
    body[axis + "_values"] = $("xyz-" + axis + "-values").value;
  });
  return body;
};

XYZ.prototype.clearErrors = function () {
  AXES.forEach(function (axis) {
    show($("xyz-" + axis + "-error"), false);
    $("xyz-" + axis + "-values").removeAttribute("aria-invalid");
    $("xyz-" + axis + "-type").removeAttribute("aria-invalid");
  });
  show($("xyz-form-error"), false);
};

// "xyz.y_values" shows under the Y axis; any other field (the prompt ...) under the section.
XYZ.prototype.showError = function (data) {
  var match = /^xyz\.([xyz])_(type|values)$/.exec((data && data.field) || "");
  var message = (data && data.error) || "The plot could not be queued.";
  if (match) {
    var box = $("xyz-" + match[1] + "-error");
    box.textContent = message;
    show(box, true);
    $("xyz-" + match[1] + "-" + match[2]).setAttribute("aria-invalid", "true");
    return;
  }
  $("xyz-form-error").textContent = message;
  show($("xyz-form-error"), true);
};

XYZ.prototype.run = function () {
  var self = this, page = this.page;
  this.clearErrors();
  var body = page.readForm();
  body.xyz = this.settings();
  $("xyz-run").disabled = true;
  $("xyz-status").textContent = "Queueing the plot…";
  api("POST", "/api/xyz", body).then(function (result) {
    $("xyz-run").disabled = false;
    if (!result.ok) {
      $("xyz-status").textContent = "";
      self.showError(result.data);
      return;
    }
    show($("xyz-grid-link"), false);
    self.follow(result.data.group);
    if (page.queue) page.queue.refresh();  // the page's one queue poll (queue.js QueueState)
  }, function () {
    $("xyz-run").disabled = false;
    self.showError({ error: "Could not reach the server. Is it still running?" });
  });
};

XYZ.prototype.follow = function (group) {
  var self = this;
  this.groupId = group.id;
  this.render(group);
  if (group.grid || !/^(queued|running)$/.test(group.state)) return;
  clearTimeout(this.timer);
  this.timer = setTimeout(function () {
    api("GET", "/api/groups/" + encodeURIComponent(group.id)).then(function (result) {
      if (result.ok && self.groupId === group.id) self.follow(result.data.group);
    }, function () { self.follow(group); });
  }, 700);
};

XYZ.prototype.render = function (group) {
  var done = group.cells.filter(function (cell) { return cell.state === "done"; }).length;
  var running = /^(queued|running)$/.test(group.state) && !group.grid;
  show($("xyz-cancel"), running);
  if (group.grid && group.grid.images.length) {
    var url = group.grid.images[0].url;
    $("xyz-grid").src = url;
    $("xyz-grid-link").href = url;
    show($("xyz-grid-link"), true);
    $("xyz-status").textContent = "Plot done: " + done + " of " + group.cells.length +
      " cells; the grid and every cell are in the gallery.";
  } else if (running) {
    $("xyz-status").textContent = "Plot: " + done + " of " + group.cells.length + " cells done…";
  } else {
    $("xyz-status").textContent = "Plot " + group.state + ": " + done + " of " + group.cells.length +
      " cells done.";
  }
};

XYZ.prototype.cancel = function () {
  var self = this;
  if (!this.groupId) return;
  api("POST", "/api/groups/" + encodeURIComponent(this.groupId) + "/cancel").then(function (result) {
    if (result.ok) self.follow(result.data.group);
  });
};

export function initXYZ(page) {
  var section = $("xyz-section");
  return section ? new XYZ(section, page) : null;
}
