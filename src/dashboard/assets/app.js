// runvisor's dashboard: the little the pages need beyond htmx. No inline handlers, so the pages can
// run under a strict Content-Security-Policy.
"use strict";

// A form with data-confirm asks before it is sent.
document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute && event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

// A link to an attempt (a bar on the timeline) opens that attempt's details and brings it into view.
function openAttempt() {
  const target = location.hash.startsWith("#attempt-") && document.getElementById(location.hash.slice(1));
  if (target && target.tagName === "DETAILS") {
    target.open = true;
    target.scrollIntoView({ block: "nearest" });
    target.querySelector("summary").focus();
  }
}
window.addEventListener("hashchange", openAttempt);
document.addEventListener("DOMContentLoaded", openAttempt);

// The Execute editor: the input must be a JSON object. Checked as it is typed; while it is not
// one, the error says why and the form cannot be sent (the server checks again).
function checkJsonEditor(form) {
  const field = form.querySelector("textarea");
  const message = form.querySelector(".field-error");
  const button = form.querySelector("button[type=submit]");
  let problem = "";
  try {
    const value = JSON.parse(field.value);
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      problem = "input_data must be a JSON object, like {\"order_id\": 42}";
    }
  } catch (error) {
    problem = "input_data is not valid JSON: " + error.message;
  }
  field.setAttribute("aria-invalid", problem ? "true" : "false");
  message.textContent = problem;
  button.disabled = Boolean(problem);
  return !problem;
}
document.addEventListener("input", (event) => {
  const form = event.target.closest && event.target.closest("form[data-json-editor]");
  if (form) checkJsonEditor(form);
});
document.addEventListener("submit", (event) => {
  if (event.target.matches("form[data-json-editor]") && !checkJsonEditor(event.target)) event.preventDefault();
});
