// "Prompts from file or textbox" (templates/_prompts.html): the generate form's settings, read with
// FormData, plus the lines go to POST /api/jobs as prompt_lines (app/web/api.py): one job per line. The
// jobs then show in the page's queue panel through its own poll. A self-contained module: it shares
// nothing with the page's other scripts but the form's markup.

const FORM_ID = "generate-form";
const MAX_FILE_BYTES = 256 * 1024;  // a text of at most 100 lines; a bigger file is likely the wrong one
// Sent as the page's Generate sends them (app.js readForm): only with their switch on.
const HIRES = ["hr_scale", "hr_resize_x", "hr_resize_y", "hr_upscaler", "hr_second_pass_steps"];
const VARIATION = ["subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h"];
const RESTORE = ["face_restorer", "code_former_weight"];
// An init image's tools: a mask and outpainting are the painter's, which a form cannot carry.
const INPAINT = ["mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
                 "inpainting_mask_invert", "outpaint"];

const $ = (id) => document.getElementById(id);

function pageConfig() {
  try {
    return JSON.parse($("page-config").textContent);
  } catch (error) {
    return {};
  }
}

// The init image as the page holds it (a chosen file, a paste or "Send to img2img"): its preview.
function initImage() {
  const preview = $("init-preview"), thumb = $("init-thumb");
  return preview && !preview.hidden && thumb && thumb.src.startsWith("data:") ? thumb.src : null;
}

// The form's settings as the request names them: the request's fields (the page config lists them)
// that the form holds, filled in and enabled (FormData leaves out disabled controls and unticked boxes).
export function readSettings(form, fields) {
  const data = new FormData(form), body = new FormData();
  const known = new Set(fields);
  const init = initImage();
  for (const [name, value] of data.entries()) {
    if (!known.has(name) || typeof value !== "string" || value.trim() === "") continue;
    if (name === "init_image") continue;  // the file box; the image itself is the preview's
    body.append(name, value);
  }
  const drop = (names) => names.forEach((name) => body.delete(name));
  const schedule = data.get("schedule_type");  // one sampler name with its schedule, as the request takes it
  if (body.has("scheduler") && schedule && schedule !== "Automatic") {
    body.set("scheduler", `${body.get("scheduler")} ${schedule}`);
  }
  if (!data.has("enable_hr")) drop(HIRES);
  else if (!init && data.get("hr_strength")) body.set("strength", data.get("hr_strength"));
  const varied = ["subseed_strength", "seed_resize_from_w", "seed_resize_from_h"].some((n) => Number(data.get(n)));
  if (init || !varied) drop(VARIATION);
  if (!data.has("restore_faces")) drop(RESTORE);
  if (!data.has("face_detail")) drop([...body.keys()].filter((n) => n.startsWith("face_detail_")));
  drop(INPAINT);
  if (init) body.set("init_image", init);
  let styles = [];
  try { styles = JSON.parse(($("styles") && $("styles").value) || "[]"); } catch (error) { styles = []; }
  styles.forEach((style) => body.append("styles", style));
  return body;
}

class PromptLines {
  constructor(form) {
    this.form = form;
    this.config = pageConfig();
    $("lines-run").addEventListener("click", () => this.run());
    $("lines-file").addEventListener("change", () => this.load());
    $("lines-text").addEventListener("input", () => this.clearErrors());
    // "Iterate seed" and "same seed" are the script's two ways; ticking one unticks the other.
    $("lines-iterate-seed").addEventListener("change", (e) => { if (e.target.checked) $("lines-same-seed").checked = false; });
    $("lines-same-seed").addEventListener("change", (e) => { if (e.target.checked) $("lines-iterate-seed").checked = false; });
    const note = () => { $("lines-init-note").hidden = !initImage(); };
    $("lines-section").addEventListener("toggle", note);
    $("lines-run").addEventListener("focus", note);
  }

  async load() {
    const file = $("lines-file").files[0];
    this.clearErrors();
    if (!file) return;
    if (file.size > MAX_FILE_BYTES) {
      this.showError({ field: "prompt_lines", error: `${file.name} is ${Math.round(file.size / 1024)} KB; a prompts ` +
                      `file of at most ${MAX_FILE_BYTES / 1024} KB is expected` });
      return;
    }
    try {
      $("lines-text").value = (await file.text()).replace(/^\uFEFF/, "");  // a BOM is no part of line 1
      const count = $("lines-text").value.split(/\r?\n/).filter((line) => line.trim()).length;
      $("lines-status").textContent = `Loaded ${file.name}: ${count} line${count === 1 ? "" : "s"}.`;
    } catch (error) {
      this.showError({ field: "prompt_lines", error: `Could not read ${file.name}.` });
    }
  }

  clearErrors() {
    $("lines-error").hidden = true;
    $("lines-form-error").hidden = true;
    $("lines-text").removeAttribute("aria-invalid");
  }

  // A line's problem shows under the lines; the form's (a setting, the queue) under the button.
  showError(data) {
    const message = (data && data.error) || "The lines could not be queued.";
    if (data && data.field === "prompt_lines") {
      $("lines-error").textContent = message;
      $("lines-error").hidden = false;
      $("lines-text").setAttribute("aria-invalid", "true");
      return;
    }
    $("lines-form-error").textContent = message;
    $("lines-form-error").hidden = false;
  }

  async post(body) {
    const response = await fetch("/api/jobs", {
      method: "POST", body, credentials: "same-origin",
      headers: { Accept: "application/json", "ngrok-skip-browser-warning": "1" },
    });
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!data || typeof data !== "object") {
      data = { ok: false, error: `The server answered ${response.status} instead of JSON.` };
    }
    return { ok: response.ok && data.ok !== false, data };
  }

  async run() {
    this.clearErrors();
    $("lines-init-note").hidden = !initImage();
    const text = $("lines-text").value;
    if (!text.trim()) {
      this.showError({ field: "prompt_lines", error: "prompt_lines: write one prompt a line, or load a text file" });
      $("lines-text").focus();
      return;
    }
    const body = readSettings(this.form, this.config.fields || []);
    body.set("prompt_lines", text);
    if ($("lines-iterate-seed").checked) body.set("iterate_seed", "true");
    if ($("lines-same-seed").checked) body.set("same_seed", "true");
    body.set("prompt_position", $("lines-position").value);
    $("lines-run").disabled = true;
    $("lines-status").textContent = "Queueing the lines…";
    let result;
    try {
      result = await this.post(body);
    } catch (error) {
      result = { ok: false, data: { error: "Could not reach the server. Is it still running?" } };
    }
    $("lines-run").disabled = false;
    if (!result.ok) {
      $("lines-status").textContent = "";
      this.showError(result.data);
      return;
    }
    this.render(result.data.jobs || [], result.data.not_queued);
  }

  render(jobs, notQueued) {
    const list = $("lines-jobs");
    list.replaceChildren(...jobs.map((job) => {
      const item = document.createElement("li");
      item.dataset.job = job.id;
      item.textContent = job.params && job.params.prompt ? job.params.prompt : job.id;
      return item;
    }));
    list.hidden = jobs.length === 0;
    let status = `Queued ${jobs.length} job${jobs.length === 1 ? "" : "s"}, one per line; they show in Your jobs ` +
                 "as they run, then in the gallery.";
    if (notQueued) {
      status += ` Line ${notQueued.line} of ${notQueued.lines} and the rest were not queued: ${notQueued.error}`;
    }
    $("lines-status").textContent = status;
  }
}

const form = $(FORM_ID);
if (form && $("lines-section")) new PromptLines(form);
