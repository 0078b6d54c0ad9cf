// Model and VAE pickers of the generate page (templates/_model.html).
// A change is sent to POST /api/model, which queues the switch; the note then
// says "Loading <model>…" until GET /api/models reports it loaded (or failed).
// Jobs queued before the switch still run on the model they were queued with.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var model = document.getElementById("sd-model");
  var vae = document.getElementById("sd-vae");
  var note = document.getElementById("model-switch-note");
  if (!model || !vae || !note) return;
  var timer = null;
  var api = window.T2I.api;

  function say(text, state) {
    note.textContent = text;
    note.setAttribute("data-state", state);
  }

  function show(state) {
    model.setAttribute("data-current", state.selected);
    vae.setAttribute("data-current", state.selected_vae);
    model.value = state.selected;
    vae.value = state.selected_vae;
    if (!state.switch_allowed) {
      model.disabled = vae.disabled = true;
      var why = state.switch_refused || "model switching is off";  // the server's reason, as the API's 403 says it
      say(why.charAt(0).toUpperCase() + why.slice(1) + ".", "refused");
      return false;
    }
    model.disabled = vae.disabled = false;
    if (state.loading) {
      say("Loading " + state.loading + "…", "loading");
      return true;
    }
    if (state.state === "failed") {
      // The reason may name the server's paths: the page says only what a visitor can act on.
      say("The model could not be loaded. Choose another.", "failed");
      return false;
    }
    say("Ready: " + state.loaded + ".", "ready");
    return false;
  }

  function poll() {
    clearTimeout(timer);
    api("GET", "/api/models").then(function (result) {
      if (result.ok && show(result.data)) timer = setTimeout(poll, POLL_MS);
    }).catch(function () { timer = setTimeout(poll, POLL_MS * 3); });
  }

  function change(select, key) {
    var previous = select.getAttribute("data-current");
    var body = {};
    body[key] = select.value;
    say("Switching to " + select.value + "…", "loading");
    api("POST", "/api/model", body).then(function (result) {
      if (!result.ok) {
        select.value = previous;
        say(result.data.error || "The switch was refused.", "failed");
        return;
      }
      if (show(result.data)) timer = setTimeout(poll, POLL_MS);
    }).catch(function () {
      select.value = previous;
      say("The server could not be reached; the model was not switched.", "failed");
    });
  }

  model.addEventListener("change", function () { change(model, "model"); });
  vae.addEventListener("change", function () { change(vae, "vae"); });
  if (note.getAttribute("data-state") === "loading") poll();
})();
