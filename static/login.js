// The login page's entry module.
import { $, show } from "./api.js";

// The password box's Show/Hide button (hidden without JavaScript, where it could not work).
function initShowPassword(button) {
  var input = $(button.getAttribute("aria-controls"));
  show(button, true);
  button.addEventListener("click", function () {
    var showing = input.type === "password";
    input.type = showing ? "text" : "password";
    button.textContent = showing ? "Hide" : "Show";
    button.setAttribute("aria-label", (showing ? "Hide" : "Show") + " password");
    input.focus();
  });
}

if ($("show-password")) initShowPassword($("show-password"));
