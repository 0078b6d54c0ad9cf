// "Upscale ×2" under a result or a gallery image (T2I.upscale, used by
// static/app.js). POST /api/upscale with the image, synchronous: the answer is
// the bigger PNG, shown under the image with its own status line and a download
// link, from an object URL that is revoked when the copy is replaced or
// discarded (T2I.upscale.discard). Needs static/api.js.
(function () {
  "use strict";

  var T2I = window.T2I, el = T2I.el;
  var FACTOR = 2;

  // Free the upscaled copy's object URL in box (a .upscaled element).
  function release(box) {
    if (box.t2iObjectUrl) URL.revokeObjectURL(box.t2iObjectUrl);
    box.t2iObjectUrl = null;
  }

  function into(container, url, button) {
    var box = container.querySelector(".upscaled");
    if (!box) {
      box = el("div", { class: "upscaled" }, el("p", { class: "upscale-status", role: "status" }));
      container.appendChild(box);
    }
    var status = box.querySelector(".upscale-status");
    button.disabled = true;
    status.classList.remove("bad");
    status.textContent = "Upscaling ×" + FACTOR + "…";
    fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) throw new Error("could not load the image (" + response.status + ")");
      return response.blob();
    }).then(T2I.blobToDataURL).then(function (dataUrl) {
      return fetch("/api/upscale", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "image/png, application/json",
                   "ngrok-skip-browser-warning": "1" },
        body: JSON.stringify({ image: dataUrl, scale: FACTOR }) });
    }).then(function (response) {
      if (response.status === 401) T2I.goToLogin();
      var type = response.headers.get("Content-Type") || "";
      if (response.ok && type.indexOf("image/png") === 0) return response.blob();
      return response.text().then(function (text) {
        var data = null;
        try { data = JSON.parse(text); } catch (e) { data = null; }
        throw new Error((data && data.error) || "the server answered " + response.status);
      });
    }).then(function (blob) {
      release(box);
      if (!box.isConnected) return;  // the result was replaced while the copy was made
      var src = box.t2iObjectUrl = URL.createObjectURL(blob);
      var image = el("img", { src: src, alt: "Upscaled ×" + FACTOR + " copy", class: "upscaled-image" });
      image.onload = function () {
        status.textContent = "Upscaled to " + image.naturalWidth + "×" + image.naturalHeight + ".";
      };
      box.replaceChildren(status, image,
        el("a", { class: "button secondary small", href: src, text: "Download upscaled",
                  download: url.split("/").slice(-2).join("-").replace(/\.png$/, "") + "-x" + FACTOR + ".png" }));
      button.disabled = false;
    }).catch(function (error) {
      status.textContent = "Upscale failed: " + error.message;
      status.classList.add("bad");
      button.disabled = false;
    });
  }

  // Before root (a result list, a gallery tile) leaves the page: free its upscaled copies.
  function discard(root) {
    Array.prototype.forEach.call(root.querySelectorAll(".upscaled"), release);
  }

  T2I.upscale = { FACTOR: FACTOR, into: into, discard: discard };
})();
