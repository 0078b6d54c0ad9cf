// The lightbox (T2I.Lightbox): used by static/app.js on the generate page
// (the results) and the gallery. Needs static/api.js.
(function () {
  "use strict";

  var el = window.T2I.el, show = window.T2I.show;

  function $(id) { return document.getElementById(id); }

  // An image full size in a modal <dialog> with its settings; Esc or Close shuts
  // it and the focus goes back to what opened it; the arrow keys step through
  // the batch (the result's images, or the gallery page's).
  function Lightbox() {
    var self = this;
    this.items = [];
    this.index = 0;
    this.opener = null;
    this.image = el("img", { id: "lightbox-image", alt: "" });
    this.title = el("h2", { id: "lightbox-title" });
    this.info = el("pre", { class: "infotext", id: "lightbox-info" });
    this.prev = el("button", { type: "button", class: "secondary small", id: "lightbox-prev", text: "← Previous",
                               onclick: function () { self.step(-1); } });
    this.next = el("button", { type: "button", class: "secondary small", id: "lightbox-next", text: "Next →",
                               onclick: function () { self.step(1); } });
    this.download = el("a", { class: "button secondary small", id: "lightbox-download", text: "Download" });
    this.dialog = el("dialog", { class: "lightbox", id: "lightbox", "aria-labelledby": "lightbox-title" },
      el("div", { class: "lightbox-head" }, this.title,
         el("button", { type: "button", class: "secondary small", id: "lightbox-close", text: "Close",
                        onclick: function () { self.dialog.close(); } })),
      el("div", { class: "lightbox-body" }, this.image),
      el("div", { class: "actions" }, this.prev, this.next, this.download),
      el("details", { class: "lightbox-info", open: true }, el("summary", { text: "Settings" }), this.info));
    document.body.appendChild(this.dialog);
    this.dialog.addEventListener("keydown", function (event) {
      if (event.key === "ArrowRight") { event.preventDefault(); self.step(1); }
      else if (event.key === "ArrowLeft") { event.preventDefault(); self.step(-1); }
    });
    this.dialog.addEventListener("close", function () {
      if (self.opener && self.opener.isConnected) self.opener.focus();
      self.opener = null;
    });
  }

  // items: [{url, alt, infotext}]
  Lightbox.prototype.open = function (items, index, opener) {
    this.items = items;
    this.opener = opener || document.activeElement;
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
  };

  window.T2I.Lightbox = Lightbox;
})();
