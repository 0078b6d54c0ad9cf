// The lightbox (Lightbox): used on the generate page (the
// results, generate.js) and by static/gallery.js.
import { $, api, el, show } from "./api.js";
import * as upscaling from "./upscale.js";

var SWIPE_PX = 50;  // a shorter horizontal move is a tap or a wobble, not a swipe


function button(id, text, onclick) {
  return el("button", { type: "button", class: "secondary small", id: id, text: text, onclick: onclick });
}

// Where an image goes on the form page: the links the gallery's menu uses too.
function reuseUrl(item) {
  return "/?reuse=" + encodeURIComponent(item.job) + "&image=" + item.n;
}
function sendUrl(item, mode) {
  return "/?init=" + encodeURIComponent(item.url) + "&reuse=" + encodeURIComponent(item.job) +
    "&image=" + item.n + (mode === "inpaint" ? "&mode=inpaint" : "");
}

// An image full size in a modal <dialog> with its settings and what can be
// done with it (Reuse, Send to img2img or inpaint, Upscale, Delete). Esc or
// Close shuts it and the focus goes back to what opened it; Tab stays inside;
// the arrow keys, and a swipe on a touch screen, step through the batch (the
// result's images, or the gallery's). ``host`` may take the actions over:
// reuse(item), send(item, mode), and deleted(jobId) after a delete; without
// them Reuse and Send go to the form page.
function Lightbox(host) {
  var self = this;
  this.host = host || {};
  this.items = [];
  this.index = 0;
  this.opener = null;
  this.image = el("img", { id: "lightbox-image", alt: "" });
  this.title = el("h2", { id: "lightbox-title" });
  this.info = el("pre", { class: "infotext", id: "lightbox-info" });
  this.status = el("p", { class: "upscale-status", id: "lightbox-status", role: "status" });
  this.prev = button("lightbox-prev", "← Previous", function () { self.step(-1); });
  this.next = button("lightbox-next", "Next →", function () { self.step(1); });
  this.download = el("a", { class: "button secondary small", id: "lightbox-download", text: "Download" });
  this.reuse = button("lightbox-reuse", "Reuse settings", function () { self.act("reuse"); });
  this.sendImg2img = button("lightbox-img2img", "Send to img2img", function () { self.act("send", "img2img"); });
  this.sendInpaint = button("lightbox-inpaint", "Send to inpaint", function () { self.act("send", "inpaint"); });
  this.upscale = button("lightbox-upscale", "Upscale ×" + upscaling.FACTOR, function () { self.upscaleItem(); });
  this.remove = el("button", { type: "button", class: "danger small", id: "lightbox-delete", text: "Delete",
                               onclick: function () { self.deleteItem(); } });
  this.body = el("div", { class: "lightbox-body" }, this.image);
  this.dialog = el("dialog", { class: "lightbox", id: "lightbox", "aria-labelledby": "lightbox-title" },
    el("div", { class: "lightbox-head" }, this.title,
       button("lightbox-close", "Close", function () { self.dialog.close(); })),
    this.body,
    el("div", { class: "actions" }, this.prev, this.next, this.download, this.reuse, this.sendImg2img,
       this.sendInpaint, this.upscale, this.remove),
    this.status,
    el("details", { class: "lightbox-info", open: true }, el("summary", { text: "Settings" }), this.info));
  document.body.appendChild(this.dialog);
  this.dialog.addEventListener("keydown", function (event) { self.key(event); });
  this.swipes();
  this.dialog.addEventListener("close", function () {
    var opener = self.opener;
    self.opener = null;
    if (self.handedOver) { self.handedOver = false; return; }  // the host's action placed the focus
    if (opener && opener.isConnected) opener.focus();
    else if (self.host.focusAfterClose) self.host.focusAfterClose();
  });
}

// items: [{url, alt, infotext, job, n, mine}]; job and n (a gallery image's) enable the actions.
Lightbox.prototype.open = function (items, index, opener) {
  this.items = items;
  this.opener = opener || document.activeElement;
  this.status.textContent = "";
  this.show(index);
  if (!this.dialog.open) this.dialog.showModal();
  $("lightbox-close").focus();
};

Lightbox.prototype.step = function (delta) {
  if (this.items.length > 1) this.show((this.index + delta + this.items.length) % this.items.length);
};

Lightbox.prototype.show = function (index) {
  var item = this.items[index];
  this.index = index;
  this.image.src = item.url;
  this.image.alt = item.alt || "";
  this.title.textContent = (item.alt || "Image") + (this.items.length > 1 ? " (" + (index + 1) + " of " +
                                                    this.items.length + ")" : "");
  this.info.textContent = item.infotext || "No settings stored with this image.";
  this.download.href = item.url + (item.url.indexOf("?") < 0 ? "?" : "&") + "download=1";
  this.download.setAttribute("download", item.url.split("/").slice(-2).join("-"));
  show(this.prev, this.items.length > 1);
  show(this.next, this.items.length > 1);
  var stored = !!item.job;
  [this.reuse, this.sendImg2img, this.sendInpaint, this.upscale].forEach(function (node) { show(node, stored); });
  show(this.remove, stored && !!item.mine);  // the API deletes only the caller's own jobs
};

Lightbox.prototype.key = function (event) {
  if (event.key === "ArrowRight") { event.preventDefault(); this.step(1); }
  else if (event.key === "ArrowLeft") { event.preventDefault(); this.step(-1); }
  else if (event.key === "Tab") this.trapTab(event);
};

// The modal dialog already makes the page behind it inert; Tab past the last
// control comes back to the first (not to the browser's address bar).
Lightbox.prototype.trapTab = function (event) {
  var controls = Array.prototype.filter.call(
    this.dialog.querySelectorAll("button, a[href], summary, [tabindex]:not([tabindex='-1'])"),
    function (node) { return !node.disabled && node.getClientRects().length > 0; });
  if (!controls.length) return;
  var first = controls[0], last = controls[controls.length - 1];
  if (event.shiftKey && document.activeElement === first) { event.preventDefault(); last.focus(); }
  else if (!event.shiftKey && document.activeElement === last) { event.preventDefault(); first.focus(); }
};

// A horizontal swipe over the image steps (left: the next one), with the pointer
// events of a finger, a pen or a mouse; touch-action (app.css) leaves vertical
// scrolling and pinch-zoom to the browser.
Lightbox.prototype.swipes = function () {
  var self = this, start = null;
  this.body.addEventListener("pointerdown", function (event) {
    if (event.isPrimary) start = { x: event.clientX, y: event.clientY, id: event.pointerId };
  });
  this.body.addEventListener("pointerup", function (event) {
    if (!start || event.pointerId !== start.id) return;
    var dx = event.clientX - start.x, dy = event.clientY - start.y;
    start = null;
    if (Math.abs(dx) >= SWIPE_PX && Math.abs(dx) > 1.5 * Math.abs(dy)) self.step(dx < 0 ? 1 : -1);
  });
  this.body.addEventListener("pointercancel", function () { start = null; });
  this.image.addEventListener("dragstart", function (event) { event.preventDefault(); });  // a mouse swipe
};

// Reuse and Send: the host's own way (the form page fills itself), else the form page's links.
Lightbox.prototype.act = function (name, mode) {
  var item = this.items[this.index];
  if (this.host[name]) {
    this.handedOver = true;
    this.dialog.close();
    this.host[name](item, mode);
    return;
  }
  window.location.assign(name === "reuse" ? reuseUrl(item) : sendUrl(item, mode));
};

// An Extras job as the gallery card's Upscale queues it: its result is a gallery image.
Lightbox.prototype.upscaleItem = function () {
  var self = this, item = this.items[this.index];
  this.status.classList.remove("bad");
  this.upscale.disabled = true;
  upscaling.queue(item.url, function (text) { self.status.textContent = text; }).then(function (job) {
    self.status.textContent = "Upscaled ×" + upscaling.FACTOR + ": the copy is in the gallery.";
    if (self.host.upscaled) self.host.upscaled(job);
  }, function (error) {
    self.status.textContent = "Upscale failed: " + error.message;
    self.status.classList.add("bad");
  }).then(function () { self.upscale.disabled = false; });
};

Lightbox.prototype.deleteItem = function () {
  var self = this, item = this.items[this.index];
  if (!window.confirm("Delete this job and all its images? This cannot be undone.")) return;
  this.remove.disabled = true;
  api("DELETE", "/api/jobs/" + encodeURIComponent(item.job)).then(function (result) {
    self.remove.disabled = false;
    if (!result.ok) {
      self.status.textContent = "Not deleted: " + (result.data.error || "the server refused");
      self.status.classList.add("bad");
      return;
    }
    self.items = self.items.filter(function (other) { return other.job !== item.job; });
    if (self.host.deleted) self.host.deleted(item.job);
    if (!self.items.length) { self.dialog.close(); return; }
    self.status.classList.remove("bad");
    self.status.textContent = "Deleted.";
    self.show(Math.min(self.index, self.items.length - 1));
    $("lightbox-close").focus();
  }, function () {
    self.remove.disabled = false;
    self.status.textContent = "The server could not be reached; nothing was deleted.";
    self.status.classList.add("bad");
  });
};

export { Lightbox, reuseUrl, sendUrl };
