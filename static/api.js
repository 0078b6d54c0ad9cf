// Shared by every page script (loaded first): the one JSON call with its error
// shape and the 401 -> login step, and small DOM helpers. Everything is on
// window.T2I, which static/brush.js, mask.js, lightbox.js and upscale.js extend and
// static/app.js, styles.js, models.js and loras.js use.
(function () {
  "use strict";

  var T2I = window.T2I = window.T2I || {};

  // Build an element: el("a", {href: url, class: "x"}, "text", child, ...)
  T2I.el = function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = String(value);
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  };

  T2I.show = function (node, visible) { if (node) node.hidden = !visible; };

  T2I.goToLogin = function () {
    var next = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(next));
  };

  // The answer's JSON, or the error shape when there is none (a proxy such as
  // ngrok or Colab may answer with HTML).
  T2I.readJSON = function (response) {
    return response.text().then(function (text) {
      var data = null;
      try { data = JSON.parse(text); } catch (e) { data = null; }
      if (!data || typeof data !== "object") {
        data = { ok: false, status: response.status, field: null, value: null,
                 error: "The server answered " + response.status + " " + (response.statusText || "") +
                        " instead of JSON." };
      }
      return data;
    });
  };

  // One JSON call. Resolves to {ok, status, data}; data always has the error
  // shape on failure. A 401 (the login expired) goes to the login page.
  // Rejects only when the server cannot be reached.
  T2I.api = function (method, url, body) {
    // The header keeps free ngrok's browser-warning page out of API answers.
    var options = { method: method, credentials: "same-origin",
                    headers: { Accept: "application/json", "ngrok-skip-browser-warning": "1" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      if (response.status === 401) T2I.goToLogin();
      return T2I.readJSON(response).then(function (data) {
        return { ok: response.ok && data.ok !== false, status: response.status, data: data };
      });
    });
  };

  // Copy text to the clipboard (the old way where the Clipboard API is missing: plain http); the
  // button says "Copied" for a moment, then copied() is called.
  T2I.copyText = function (text, button, copied) {
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      window.setTimeout(function () { button.textContent = label; }, 1500);
      if (copied) copied();
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { copyFallback(text) && done(); });
    } else if (copyFallback(text)) done();
  };

  function copyFallback(text) {
    var box = T2I.el("textarea", { class: "visually-hidden", "aria-hidden": "true", readonly: true });
    box.value = text;
    document.body.appendChild(box);
    box.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    box.remove();
    return ok;
  }

  T2I.blobToDataURL = function (blob) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () { resolve(reader.result); };
      reader.onerror = function () { reject(new Error("could not read the image")); };
      reader.readAsDataURL(blob);
    });
  };
})();
