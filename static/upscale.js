// "Upscale ×2" under a result, on a gallery card or in the lightbox (used by the
// generate page, gallery.js and lightbox.js): queues an Extras job
// (POST /api/upscale with the gallery image's job and number, issue #24) and
// follows it; the upscaled image is a gallery image like any other, with its
// infotext, so it stays after a reload.
import { api, el } from "./api.js";

var FACTOR = 2;
var POLL_MS = 500;
var IMAGE_URL = /\/images\/([0-9a-f]{32})\/(\d+)\.png/;

// The finished job (a promise), after report(text) for each state on the way;
// rejects with the reason when it could not be queued or did not finish.
function queue(url, report) {
  var match = IMAGE_URL.exec(url);
  if (!match) return Promise.reject(new Error("not a gallery image"));
  report("Upscaling ×" + FACTOR + "…");

  function answered(answer) {
    if (!answer.ok) throw new Error(answer.data.error);
    return follow(answer.data.job);
  }
  function follow(job) {
    if (job.state === "queued" || job.state === "running") {
      report("Upscaling ×" + FACTOR + ": " + job.state +
        (job.state === "running" ? " " + Math.round(100 * (job.progress.fraction || 0)) + "%" : "") + "…");
      return new Promise(function (resolve) { setTimeout(resolve, POLL_MS); }).then(function () {
        return api("GET", "/api/jobs/" + job.id).then(answered);
      });
    }
    if (job.state !== "done" || !job.images.length) throw new Error(job.error || "the job was " + job.state);
    return job;
  }
  return api("POST", "/api/upscale", { source_job: match[1], source_image: Number(match[2]), scale: FACTOR })
    .then(answered);
}

// Under a result or a gallery card: a status line, then the copy with its download link.
function into(container, url, button) {
  var box = container.querySelector(".upscaled");
  if (!box) {
    box = el("div", { class: "upscaled" }, el("p", { class: "upscale-status", role: "status" }));
    container.appendChild(box);
  }
  var status = box.querySelector(".upscale-status");
  button.disabled = true;
  status.classList.remove("bad");
  queue(url, function (text) { if (box.isConnected) status.textContent = text; }).then(function (job) {
    if (!box.isConnected) return;  // the result was replaced meanwhile
    var image = job.images[0];
    var copy = el("img", { src: image.url, alt: "Upscaled ×" + FACTOR + " copy", class: "upscaled-image" });
    copy.onload = function () {
      status.textContent = "Upscaled to " + copy.naturalWidth + "×" + copy.naturalHeight + " (in the gallery).";
    };
    box.replaceChildren(status, copy,
      el("a", { class: "button secondary small", href: image.url + "?download=1", text: "Download upscaled",
                download: url.split("/").slice(-2).join("-").replace(/\.png$/, "") + "-x" + FACTOR + ".png" }));
    button.disabled = false;
  }, function (error) {
    status.textContent = "Upscale failed: " + error.message;
    status.classList.add("bad");
    button.disabled = false;
  });
}

export { FACTOR, queue, into };
