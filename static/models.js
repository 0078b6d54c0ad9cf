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

  function say(text, state) {
    note.textContent = text;
    note.setAttribute("data-state", state);
  }

  function call(method, url, body) {
    var options = { method: method, credentials: "same-origin",
                    headers: { Accept: "application/json", "ngrok-skip-browser-warning": "1" } };
    if (body) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      return response.json().catch(function () {
        return { ok: false, error: "The server answered " + response.status + " instead of JSON." };
      }).then(function (data) {
        if (!response.ok && data.ok !== false) data = { ok: false, error: "Error " + response.status };
        return data;
      });
    });
  }

  function show(state) {
    model.setAttribute("data-current", state.selected);
    vae.setAttribute("data-current", state.selected_vae);
    model.value = state.selected;
    vae.value = state.selected_vae;
    if (!state.switch_allowed) {
      model.disabled = vae.disabled = true;
      say("Switching is off: " + state.switch_refused + ".", "refused");
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
    call("GET", "/api/models").then(function (state) {
      if (state.ok && show(state)) timer = setTimeout(poll, POLL_MS);
    }).catch(function () { timer = setTimeout(poll, POLL_MS * 3); });
  }

  function change(select, key) {
    var previous = select.getAttribute("data-current");
    var body = {};
    body[key] = select.value;
    say("Switching to " + select.value + "…", "loading");
    call("POST", "/api/model", body).then(function (state) {
      if (!state.ok) {
        select.value = previous;
        say(state.error || "The switch was refused.", "failed");
        return;
      }
      if (show(state)) timer = setTimeout(poll, POLL_MS);
    }).catch(function () {
      select.value = previous;
      say("The server could not be reached; the model was not switched.", "failed");
    });
  }

  model.addEventListener("change", function () { change(model, "model"); });
  vae.addEventListener("change", function () { change(vae, "vae"); });
  if (note.getAttribute("data-state") === "loading") poll();
})();
