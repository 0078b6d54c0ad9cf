// The Extras page (/extras, issue #24): an uploaded or gallery image, A1111's
// extras fields, or SD upscale; the result is a job (POST /api/extras, or
// /api/jobs with sd_upscale), followed here with its progress until its image
// is in the gallery. The page's entry module.
import { $, api, blobToDataURL, el, show as showNode } from "./api.js";
import { startHealth } from "./health.js";

var form = $("extras-form");
var uploaded = null;  // a data URL of the chosen file

function number(id) { var node = $(id); return node ? Number(node.value) : undefined; }

$("resize_mode").addEventListener("change", function () {
  var to = $("resize_mode").value === "1";
  showNode($("scale-by"), !to);
  showNode($("scale-to"), to);
});
$("sd-upscale").addEventListener("change", function () { showNode($("sd-upscale-options"), $("sd-upscale").checked); });
$("extras-image").addEventListener("change", function () {
  var file = $("extras-image").files[0];
  if (!file) return;
  blobToDataURL(file).then(function (url) {
    uploaded = url;
    var preview = $("extras-source-image");
    preview.src = url;
    preview.setAttribute("data-job", "");
    $("extras-source-label").textContent = "Uploaded: " + file.name;
    showNode($("extras-source"), true);
  });
});

function source() {
  var job = $("extras-source-image").getAttribute("data-job");
  if (job) return { source_job: job, source_image: Number($("extras-source-image").getAttribute("data-n") || 0) };
  return uploaded ? { image: uploaded } : null;
}

function error(message) {
  $("extras-error").textContent = message || "";
  showNode($("extras-error"), Boolean(message));
}

// SD upscale runs as img2img: it needs the pixels, so a gallery image is fetched first.
function initImage(src) {
  if (src.image) return Promise.resolve(src.image);
  return fetch($("extras-source-image").src, { credentials: "same-origin" }).then(function (response) {
    if (!response.ok) throw new Error("could not load the image (" + response.status + ")");
    return response.blob();
  }).then(blobToDataURL);
}

function request(src) {
  if ($("sd-upscale").checked) {
    return initImage(src).then(function (image) {
      return api("POST", "/api/jobs", {
        prompt: $("sd-prompt").value, init_image: image, strength: number("sd-strength"), steps: number("sd-steps"),
        sd_upscale: { overlap: number("sd-overlap"), upscaler: $("upscaler_1").value,
                      scale_factor: number("upscaling_resize") } });
    });
  }
  var body = Object.assign({}, src, {
    upscaler_1: $("upscaler_1").value, upscaler_2: $("upscaler_2").value,
    extras_upscaler_2_visibility: number("extras_upscaler_2_visibility"), resize_mode: number("resize_mode"),
    upscaling_resize: number("upscaling_resize"), upscaling_resize_w: number("upscaling_resize_w"),
    upscaling_resize_h: number("upscaling_resize_h"), upscaling_crop: $("upscaling_crop").checked });
  ["gfpgan_visibility", "codeformer_visibility", "codeformer_weight"].forEach(function (name) {
    if ($(name)) body[name] = number(name);
  });
  return api("POST", "/api/extras", body);
}

function show(job) {
  var box = $("extras-job");
  box.setAttribute("data-state", job.state);
  showNode(box, true);
  $("extras-progress").value = job.progress.fraction || (job.state === "done" ? 1 : 0);
  $("extras-status").textContent = job.state === "failed" ? "Failed: " + job.error :
    job.state === "done" ? "Done: the image is in the gallery." : "The job is " + job.state + "…";
  if (job.state !== "done") return;
  var image = job.images[0];
  $("extras-result").replaceChildren(
    el("img", { src: image.url, alt: "The processed image", class: "extras-preview" }),
    el("pre", { class: "infotext", id: "extras-infotext", text: image.infotext }),
    el("div", { class: "actions" },
      el("a", { class: "button secondary small", href: image.url + "?download=1", download: "", text: "Download" }),
      el("a", { class: "button secondary small", href: "/gallery", text: "Open the gallery" })));
}

function follow(id) {
  api("GET", "/api/jobs/" + id).then(function (answer) {
    if (!answer.ok) { error(answer.data.error); return; }
    show(answer.data.job);
    if (["queued", "running"].indexOf(answer.data.job.state) >= 0) setTimeout(function () { follow(id); }, 500);
    else $("extras-submit").disabled = false;
  });
}

form.addEventListener("submit", function (event) {
  event.preventDefault();
  error("");
  var src = source();
  if (!src) { error("Choose an image to process first."); return; }
  $("extras-submit").disabled = true;
  request(src).then(function (answer) {
    if (!answer.ok) { error(answer.data.error); $("extras-submit").disabled = false; return; }
    $("extras-result").replaceChildren();
    show(answer.data.job);
    follow(answer.data.job.id);
  }).catch(function (exc) { error(exc.message); $("extras-submit").disabled = false; });
});

startHealth();
