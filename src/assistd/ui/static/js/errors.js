// Errors from the API are shown with their message, never swallowed.

import { h } from "./dom.js";

export function report(err) {
  if (err && err.name === "AbortError") return; // we stopped it ourselves
  const box = document.getElementById("errors");
  const message = (err && err.message) || String(err);
  const status = err && err.status ? `${err.status}: ` : "";
  const row = h("div", { class: "error" }, h("p", {}, status + message),
    h("button", { type: "button", class: "quiet", onclick: () => row.remove() }, "Dismiss"));
  box.append(row);
  while (box.children.length > 5) box.firstChild.remove();
}

/** An event handler whose failure is reported. */
export function guard(fn) {
  return async (...args) => {
    try { return await fn(...args); } catch (err) { report(err); }
  };
}

export function clearErrors() {
  document.getElementById("errors").replaceChildren();
}
