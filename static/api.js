// Shared by every page's modules: the one JSON call with its error shape and the
// 401 -> login step, and small DOM helpers.

export function $(id) { return document.getElementById(id); }

// The page's settings from the server (templates/index.html's #page-config JSON).
export function pageConfig() {
var node = $("page-config");
if (!node) return { defaults: {}, limits: {} };
try { return JSON.parse(node.textContent); } catch (e) { return { defaults: {}, limits: {} }; }
}

// Build an element: el("a", {href: url, class: "x"}, "text", child, ...)
export function el(tag, attrs) {
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
}

export function show(node, visible) { if (node) node.hidden = !visible; }

export function goToLogin() {
  var next = window.location.pathname + window.location.search;
  window.location.assign("/login?next=" + encodeURIComponent(next));
}

// The answer's JSON, or the error shape when there is none (a proxy such as
// ngrok or Colab may answer with HTML).
export function readJSON(response) {
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
}

// One JSON call. Resolves to {ok, status, data}; data always has the error
// shape on failure. A 401 (the login expired) goes to the login page.
// Rejects only when the server cannot be reached.
export function api(method, url, body) {
  // The header keeps free ngrok's browser-warning page out of API answers.
  var options = { method: method, credentials: "same-origin",
                  headers: { Accept: "application/json", "ngrok-skip-browser-warning": "1" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return fetch(url, options).then(function (response) {
    if (response.status === 401) goToLogin();
    return readJSON(response).then(function (data) {
      return { ok: response.ok && data.ok !== false, status: response.status, data: data };
    });
  });
}

// Copy text to the clipboard (the old way where the Clipboard API is missing: plain http); the
// button says "Copied" for a moment, then copied() is called.
export function copyText(text, button, copied) {
  var done = function () {
    var label = button.textContent;
    button.textContent = "Copied";
    window.setTimeout(function () { button.textContent = label; }, 1500);
    if (copied) copied();
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { copyFallback(text) && done(); });
  } else if (copyFallback(text)) done();
}

function copyFallback(text) {
  var box = el("textarea", { class: "visually-hidden", "aria-hidden": "true", readonly: true });
  box.value = text;
  document.body.appendChild(box);
  box.select();
  var ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  box.remove();
  return ok;
}

export function blobToDataURL(blob) {
  return new Promise(function (resolve, reject) {
    var reader = new FileReader();
    reader.onload = function () { resolve(reader.result); };
    reader.onerror = function () { reject(new Error("could not read the image")); };
    reader.readAsDataURL(blob);
  });
}
