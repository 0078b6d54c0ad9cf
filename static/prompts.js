// "Prompts from file or textbox" (templates/_prompts.html): the generate page's request (its readForm:
// the same settings Generate sends, init image, mask and ControlNet units included) plus the lines go
// to POST /api/jobs as prompt_lines (app/web/api.py): one job per line. The jobs then show in the
// page's queue panel through its own poll.
import { $, api } from "./api.js";

const MAX_FILE_BYTES = 256 * 1024;  // a text of at most 100 lines; a bigger file is likely the wrong one

class PromptLines {
  constructor(page) {
    this.page = page;
    $("lines-run").addEventListener("click", () => this.run());
    $("lines-file").addEventListener("change", () => this.load());
    $("lines-text").addEventListener("input", () => this.clearErrors());
    // "Iterate seed" and "same seed" are the script's two ways; ticking one unticks the other.
    $("lines-iterate-seed").addEventListener("change", (e) => { if (e.target.checked) $("lines-same-seed").checked = false; });
    $("lines-same-seed").addEventListener("change", (e) => { if (e.target.checked) $("lines-iterate-seed").checked = false; });
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

  async run() {
    this.clearErrors();
    const text = $("lines-text").value;
    if (!text.trim()) {
      this.showError({ field: "prompt_lines", error: "prompt_lines: write one prompt a line, or load a text file" });
      $("lines-text").focus();
      return;
    }
    const body = this.page.readForm();
    body.prompt_lines = text;
    if ($("lines-iterate-seed").checked) body.iterate_seed = true;
    if ($("lines-same-seed").checked) body.same_seed = true;
    body.prompt_position = $("lines-position").value;
    $("lines-run").disabled = true;
    $("lines-status").textContent = "Queueing the lines…";
    let result;
    try {
      result = await api("POST", "/api/jobs", body);
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

export function initPromptLines(page) {
  return $("lines-section") ? new PromptLines(page) : null;
}
