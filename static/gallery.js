// The gallery page (templates/gallery.html): each tile's actions menu, the
// lightbox over the loaded tiles, and the next page loaded on scroll; the page's
// entry module. (No inline handlers: the page's CSP forbids them.)
import { $, api, copyText, el } from "./api.js";
import { startHealth } from "./health.js";
import { Lightbox } from "./lightbox.js";
import * as upscaling from "./upscale.js";

// ------------------------------------------------------------ the menus
// A menu button (WAI-ARIA's pattern): Enter, Space or ↓ opens it on its first
// item, ↑ on its last; ↑/↓, Home and End move; Escape closes it back onto the
// button; Tab, a click elsewhere or choosing an item closes it.
function Menus(root) {
  var self = this;
  this.open = null;  // the open menu's button
  root.addEventListener("click", function (event) {
    var button = event.target.closest(".menu-button");
    if (button) { self.toggle(button, 0); return; }
    // A link goes elsewhere; after a button (Copy, Upscale, Delete) the focus is back on the menu's button.
    var item = event.target.closest("[role=menuitem]");
    if (item) self.close(item.tagName === "BUTTON");
  });
  root.addEventListener("keydown", function (event) { self.key(event); });
  document.addEventListener("click", function (event) {
    if (self.open && !event.target.closest(".tile-menu")) self.close(false);
  });
}

Menus.prototype.items = function (button) {
  return Array.prototype.slice.call($(button.getAttribute("aria-controls")).querySelectorAll("[role=menuitem]"));
};

Menus.prototype.toggle = function (button, focus) {
  if (this.open === button) { this.close(true); return; }
  this.close(false);
  this.open = button;
  button.setAttribute("aria-expanded", "true");
  $(button.getAttribute("aria-controls")).hidden = false;
  var items = this.items(button);
  items[focus < 0 ? items.length - 1 : 0].focus();
};

Menus.prototype.close = function (refocus) {
  var button = this.open;
  if (!button) return;
  this.open = null;
  if (!button.isConnected) return;  // its tile was deleted
  button.setAttribute("aria-expanded", "false");
  $(button.getAttribute("aria-controls")).hidden = true;
  if (refocus) button.focus();
};

Menus.prototype.key = function (event) {
  var button = event.target.closest(".menu-button");
  if (button && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    event.preventDefault();
    if (this.open === button) this.close(false);
    this.toggle(button, event.key === "ArrowUp" ? -1 : 0);
    return;
  }
  var item = event.target.closest("[role=menuitem]");
  if (!item || !this.open) return;
  var items = this.items(this.open), at = items.indexOf(item), next = null;
  if (event.key === "ArrowDown") next = items[(at + 1) % items.length];
  else if (event.key === "ArrowUp") next = items[(at - 1 + items.length) % items.length];
  else if (event.key === "Home") next = items[0];
  else if (event.key === "End") next = items[items.length - 1];
  else if (event.key === "Escape") { event.preventDefault(); this.close(true); return; }
  else if (event.key === "Tab") { this.close(false); return; }
  else if (event.key === " " && item.tagName === "A") { event.preventDefault(); item.click(); return; }
  if (next) { event.preventDefault(); next.focus(); }
};

// ------------------------------------------------------------ the tiles
function tiles(root) { return Array.prototype.slice.call(root.querySelectorAll("article.tile")); }

// A tile as the lightbox's item.
function item(tile) {
  var link = tile.querySelector("a.tile-image"), info = $(link.getAttribute("data-info"));
  return { url: link.getAttribute("href"), alt: link.querySelector("img").getAttribute("alt"),
           infotext: info ? info.textContent : "", job: tile.getAttribute("data-job"),
           n: Number(tile.getAttribute("data-n")), mine: tile.hasAttribute("data-mine") };
}

// Every tile of the job goes (a delete removes the job and all its images).
function removeJob(root, jobId) {
  var focused = document.activeElement && document.activeElement.closest("article.tile");
  tiles(root).forEach(function (tile) { if (tile.getAttribute("data-job") === jobId) tile.remove(); });
  if (focused && !focused.isConnected) {  // the focus was in a deleted tile: the first tile's link takes it
    var first = root.querySelector("a.tile-image");
    (first || document.querySelector(".page-title")).focus();
  }
  if (!tiles(root).length && !$("older")) {
    root.before(el("p", { class: "card empty", id: "gallery-empty", text: "No images left on this page." }));
  }
}

function deleteFromTile(root, button) {
  var jobId = button.getAttribute("data-delete-job");
  if (!window.confirm("Delete this job and all its images? This cannot be undone.")) return;
  button.disabled = true;
  api("DELETE", "/api/jobs/" + encodeURIComponent(jobId)).then(function (result) {
    button.disabled = false;
    if (!result.ok) { window.alert(result.data.error || "Could not delete the job."); return; }
    removeJob(root, jobId);
    $("gallery-loading").textContent = "Deleted.";
  }, function () {
    button.disabled = false;
    window.alert("The server could not be reached; the job was not deleted.");
  });
}

function initGallery(root) {
  var lightbox = new Lightbox({
    deleted: function (jobId) { removeJob(root, jobId); },
    // The tile that opened it was deleted: the focus goes to the first tile left, or the heading.
    focusAfterClose: function () {
      var first = root.querySelector("a.tile-image");
      (first || document.querySelector(".page-title")).focus();
    },
  });
  new Menus(root);
  root.addEventListener("click", function (event) {
    var copy = event.target.closest("[data-copy]");
    if (copy) {  // the menu closes: the status line says it was copied
      copyText($(copy.getAttribute("data-copy")).textContent, copy, function () {
        $("gallery-loading").textContent = "Parameters copied.";
      });
      return;
    }
    var upscale = event.target.closest("[data-upscale]");
    if (upscale) {
      upscaling.into(upscale.closest(".tile-body"), upscale.getAttribute("data-upscale"), upscale);
      return;
    }
    var remove = event.target.closest("[data-delete-job]");
    if (remove) { deleteFromTile(root, remove); return; }
    var open = event.target.closest("a.tile-image");
    if (open && !(event.ctrlKey || event.metaKey || event.shiftKey || event.button)) {
      event.preventDefault();
      var all = tiles(root);
      lightbox.open(all.map(item), all.indexOf(open.closest("article.tile")), open);
    }
  });
  if ($("older") && "IntersectionObserver" in window) new Pager(root, $("gallery-pager"));
}

// ------------------------------------------------------- infinite scroll
// When the pager comes near the viewport, the "Older" link's page (the same
// server-rendered tiles, the search's filters kept in the link) is fetched and
// its tiles appended; its own "Older" link is the next cursor. Without
// JavaScript, or when a load fails, the link still works as a link.
var PRELOAD = "600px";

function Pager(root, nav) {
  var self = this;
  this.root = root;
  this.nav = nav;
  this.loading = false;
  this.observer = new IntersectionObserver(function (entries) {
    if (entries.some(function (entry) { return entry.isIntersecting; })) self.load();
  }, { rootMargin: "0px 0px " + PRELOAD + " 0px" });
  this.observer.observe(nav);
}

Pager.prototype.load = function () {
  var self = this, older = $("older"), status = $("gallery-loading");
  if (this.loading || !older) return;
  this.loading = true;
  status.textContent = "Loading older images…";
  fetch(older.href, { credentials: "same-origin", headers: { Accept: "text/html" } }).then(function (response) {
    if (!response.ok) throw new Error("the server answered " + response.status);
    return response.text();
  }).then(function (html) {
    // The server's own page, escaped by its templates; parsed inert (no script runs) and adopted.
    var page = new DOMParser().parseFromString(html, "text/html");
    var added = Array.prototype.slice.call(page.querySelectorAll("#gallery > article.tile"));
    added.forEach(function (tile) { self.root.appendChild(document.adoptNode(tile)); });
    var next = page.getElementById("older");
    status.textContent = added.length + " older image" + (added.length === 1 ? "" : "s") + " loaded" +
      (next ? "." : "; that is all.");
    if (next) older.href = next.getAttribute("href");
    else { older.remove(); self.observer.disconnect(); }
    self.loading = false;
    if (next) { self.observer.unobserve(self.nav); self.observer.observe(self.nav); }  // still in view: go on
  }).catch(function (error) {
    status.textContent = "Could not load older images (" + error.message + "); the Older link loads them.";
    self.observer.disconnect();
    self.loading = false;
  });
};

if ($("gallery")) initGallery($("gallery"));
startHealth();
