import { $, el, show } from "./api.js";

// The last 50 prompts sent from this browser (localStorage), searchable;
// choosing one puts it, and its negative prompt, back into the form.
var HISTORY_KEY = "t2i.promptHistory";
var HISTORY_MAX = 50;

export function PromptHistory(page) {
  var self = this;
  this.page = page;
  $("history-toggle").addEventListener("click", function () { self.toggle(); });
  $("history-search").addEventListener("input", function () { self.render(); });
  $("history-search").addEventListener("keydown", function (event) {
    if (event.key === "Escape") { self.toggle(false); $("history-toggle").focus(); }
  });
}

PromptHistory.prototype.load = function () {
  try { return JSON.parse(window.localStorage.getItem(HISTORY_KEY)) || []; } catch (e) { return []; }
};

PromptHistory.prototype.add = function (prompt, negative) {
  if (!prompt.trim()) return;
  var items = this.load().filter(function (item) { return item.prompt !== prompt; });
  items.unshift({ prompt: prompt, negative_prompt: negative || "" });
  try { window.localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, HISTORY_MAX))); } catch (e) { /* full or private */ }
  if (!$("history").hidden) this.render();
};

PromptHistory.prototype.toggle = function (open) {
  open = open === undefined ? $("history").hidden : open;
  show($("history"), open);
  $("history-toggle").setAttribute("aria-expanded", String(open));
  if (open) { this.render(); $("history-search").focus(); }
};

PromptHistory.prototype.render = function () {
  var self = this, query = $("history-search").value.trim().toLowerCase();
  var items = this.load().filter(function (item) {
    return !query || (item.prompt + " " + item.negative_prompt).toLowerCase().indexOf(query) >= 0;
  });
  $("history-list").replaceChildren.apply($("history-list"), items.map(function (item) {
    return el("li", null, el("button", { type: "button", class: "history-item", text: item.prompt,
      onclick: function () {
        $("prompt").value = item.prompt;
        $("negative_prompt").value = item.negative_prompt;
        self.toggle(false);
        $("prompt").focus();
      } }));
  }));
  $("history-empty").textContent = query ? "No earlier prompt matches." : "No earlier prompts yet.";
  show($("history-empty"), items.length === 0);
};
