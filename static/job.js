// What the page says of a job (its state, speed and time left), shared by the result panel
// (generate.js) and the job list (queue.js).

export var ACTIVE = { queued: true, running: true };
export var JOB_KEY = "t2i.currentJob";  // localStorage: the job the page shows, picked up after a reload

export function describeState(job) {
  var progress = job.progress || {};
  switch (job.state) {
    case "queued":
      return "Queued: waiting for the model to be free";
    case "running":
      return progress.total ? "Generating: step " + progress.step + " of " + progress.total : "Starting…";
    case "done": {
      var n = (job.images || []).length;
      var secs = seconds(job.started_at, job.finished_at);
      return "Done: " + n + " image" + (n === 1 ? "" : "s") + (secs !== null ? " in " + secs.toFixed(1) + " s" : "");
    }
    case "failed":
      // The load failure's details are the server log's; the page says what a visitor can do.
      if (/^the model could not be loaded/.test(job.error || "")) return "Failed: " + MODEL_FAILED;
      return "Failed: " + (job.error || "unknown error");
    case "cancelled": return hasResults(job) ? "Cancelled: " + partialLabel(job) : "Cancelled";
    default: return String(job.state);
  }
}

// A cancelled job may keep the image of its last step (``partial: true``, images as a done job's).
export function hasResults(job) {
  return (job.state === "done" || (job.state === "cancelled" && job.partial === true)) &&
    !!(job.images && job.images.length);
}

// The server's reason says where the run stopped ("cancelled after step 3 of 60"); a
// finished job's progress is not kept.
export function partialLabel(job) {
  var reason = typeof job.error === "string" ? job.error : "";
  return /^(cancelled|skipped) after step \d+ of \d+$/.test(reason) ? "partial, " + reason
                                                                   : "partial, cancelled before the end";
}

var MODEL_FAILED = "the model could not be loaded; the person running this app must restart it.";

function duration(secs) {
  secs = Math.max(1, Math.round(secs));
  return secs < 60 ? secs + " s" : Math.floor(secs / 60) + " min " + (secs % 60) + " s";
}

// Speed and time left, as the server measures them (app/web/timing.py).
export function describeTiming(job) {
  var parts = [];
  if (job.state === "running" && job.its) parts.push(job.its.toFixed(1) + " it/s");
  if (ACTIVE[job.state] && job.eta_seconds !== null && job.eta_seconds !== undefined) {
    parts.push("about " + duration(job.eta_seconds) + " left");
  }
  if (job.state === "done" && job.its) parts.push(job.its.toFixed(1) + " it/s");
  return parts.join(" · ");
}

function seconds(start, end) {
  var a = Date.parse(start), b = Date.parse(end);
  return isNaN(a) || isNaN(b) ? null : Math.max(0, (b - a) / 1000);
}
