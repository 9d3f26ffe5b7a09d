// The console's shell: the API key gate, the section router (#/section/id) and the nav.

import { get, getKey, setKey, whenUnauthorized } from "./api.js";
import { h, clear, field } from "./dom.js";
import { clearErrors, report } from "./errors.js";
import * as assistants from "./assistants.js";
import * as playground from "./playground.js";
import * as threads from "./threads.js";
import * as files from "./files.js";
import * as stores from "./vector_stores.js";

const SECTIONS = { assistants, playground, threads, files, vector_stores: stores };
const main = document.getElementById("main");
let leave = null;
let routing = false;

function keyForm(message) {
  if (leave) { leave(); leave = null; }
  const input = h("input", { type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "panel keybox" },
    h("h1", {}, "API key"),
    h("p", { class: "sub" }, "This server needs one of its API keys. The key stays in this tab (sessionStorage) only."),
    message ? h("p", { class: "invalid" }, message) : null,
    field("API key", input),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Use key")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    clearErrors();
    start();
  });
  clear(main, form);
  input.focus();
}

whenUnauthorized((message) => {
  setKey("");
  document.getElementById("forget-key").hidden = true;
  keyForm(message);
});

async function route() {
  if (leave) { leave(); leave = null; }
  const [, name = "assistants", ...rest] = (location.hash || "#/assistants").split("/");
  const section = SECTIONS[name] || assistants;
  for (const a of document.querySelectorAll(".top nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  clear(main);
  try {
    leave = (await section.mount(main, rest.map(decodeURIComponent))) || null;
  } catch (err) { report(err); }
}

async function start() {
  try {
    await get("/assistants?limit=1"); // a key is needed exactly when this answers 401
  } catch (err) {
    if (err.status === 401) return; // the key form is up
    report(err);
  }
  document.getElementById("forget-key").hidden = !getKey();
  if (!routing) {
    routing = true;
    window.addEventListener("hashchange", route);
  }
  route();
}

document.getElementById("forget-key").addEventListener("click", () => {
  setKey("");
  location.reload();
});
window.addEventListener("unhandledrejection", (e) => { e.preventDefault(); report(e.reason); });
start();
