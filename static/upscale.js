// "Upscale ×2" under a result or a gallery image (T2I.upscale, used by
// static/app.js): queues an Extras job (POST /api/upscale with the gallery
// image's job and number, issue #24) and follows it under the image with its
// own status line; the upscaled image is a gallery image like any other, with
// its infotext, so it stays after a reload. Needs static/api.js.
(function () {
  "use strict";

  var T2I = window.T2I, el = T2I.el;
  var FACTOR = 2;
  var IMAGE_URL = /\/images\/([0-9a-f]{32})\/(\d+)\.png/;

  function into(container, url, button) {
    var box = container.querySelector(".upscaled");
    if (!box) {
      box = el("div", { class: "upscaled" }, el("p", { class: "upscale-status", role: "status" }));
      container.appendChild(box);
    }
    var status = box.querySelector(".upscale-status");
    var match = IMAGE_URL.exec(url);
    function failed(message) {
      status.textContent = "Upscale failed: " + message;
      status.classList.add("bad");
      button.disabled = false;
    }
    if (!match) { failed("not a gallery image"); return; }
    button.disabled = true;
    status.classList.remove("bad");
    status.textContent = "Upscaling ×" + FACTOR + "…";

    function follow(job) {
      if (!box.isConnected) return;  // the result was replaced meanwhile
      if (job.state === "queued" || job.state === "running") {
        status.textContent = "Upscaling ×" + FACTOR + ": " + job.state +
          (job.state === "running" ? " " + Math.round(100 * (job.progress.fraction || 0)) + "%" : "") + "…";
        setTimeout(function () {
          T2I.api("GET", "/api/jobs/" + job.id).then(function (answer) {
            if (!answer.ok) failed(answer.data.error); else follow(answer.data.job);
          });
        }, 500);
        return;
      }
      if (job.state !== "done" || !job.images.length) { failed(job.error || "the job was " + job.state); return; }
      var image = job.images[0];
      var copy = el("img", { src: image.url, alt: "Upscaled ×" + FACTOR + " copy", class: "upscaled-image" });
      copy.onload = function () {
        status.textContent = "Upscaled to " + copy.naturalWidth + "×" + copy.naturalHeight + " (in the gallery).";
      };
      box.replaceChildren(status, copy,
        el("a", { class: "button secondary small", href: image.url + "?download=1", text: "Download upscaled",
                  download: url.split("/").slice(-2).join("-").replace(/\.png$/, "") + "-x" + FACTOR + ".png" }));
      button.disabled = false;
    }

    T2I.api("POST", "/api/upscale", { source_job: match[1], source_image: Number(match[2]), scale: FACTOR })
      .then(function (answer) {
        if (!answer.ok) failed(answer.data.error); else follow(answer.data.job);
      }).catch(function (exc) { failed(exc.message); });
  }

  // Kept for static/app.js: the copies are gallery images now, with nothing to free.
  function discard() {}

  T2I.upscale = { FACTOR: FACTOR, into: into, discard: discard };
})();
