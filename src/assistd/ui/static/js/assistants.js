// Assistants: list, create, edit, delete.

import { del, get, post, query } from "./api.js";
import { h, clear, field, when } from "./dom.js";
import { guard, report } from "./errors.js";

const FUNCTION_NAME = /^[a-zA-Z0-9_-]{1,64}$/;
const EXAMPLE_FUNCTION = {
  name: "get_weather",
  description: "Weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

export async function mount(main, [id]) {
  const list = h("ul", { class: "list", "aria-label": "Assistants" });
  const more = h("div");
  const editor = h("section", { class: "panel", "aria-label": "Assistant editor" });
  clear(main, h("h1", {}, "Assistants"),
    h("div", { class: "cols" },
      h("section", { class: "panel" },
        h("div", { class: "actions" }, h("button", { type: "button", onclick: () => { location.hash = "#/assistants/new"; } }, "New assistant")),
        list, more),
      editor));
  await loadList(list, more, id);
  if (id === "new") edit(editor, null);
  else if (id) edit(editor, await get(`/assistants/${id}`));
  else clear(editor, h("p", { class: "empty" }, "Pick an assistant, or make a new one."));
}

async function loadList(list, more, current, after) {
  const page = await get(`/assistants${query({ limit: 50, after })}`);
  if (!after && !page.data.length) list.append(h("li", { class: "empty" }, "No assistants yet."));
  for (const a of page.data) {
    list.append(h("li", {}, h("button", {
      type: "button", class: "item", "aria-current": a.id === current ? "true" : "false",
      onclick: () => { location.hash = `#/assistants/${a.id}`; },
    }, h("div", {}, a.name || "(unnamed)"), h("div", { class: "sub mono" }, `${a.id} · ${a.model}`))));
  }
  clear(more, page.has_more ? h("button", { type: "button", class: "secondary",
    onclick: guard(() => loadList(list, more, current, page.last_id)) }, "More assistants") : null);
}

/** The models the upstream offers, for the Model field's suggestions (a 404 is fine). */
async function models() {
  try {
    return (await get("/models")).data.map((m) => m.id);
  } catch (err) {
    if (err.status !== 404) report(err);
    return [];
  }
}

function functionEditor(fn = EXAMPLE_FUNCTION) {
  const text = h("textarea", { class: "mono", rows: 8, spellcheck: false }, JSON.stringify(fn, null, 2));
  const problem = h("div", { class: "invalid", role: "alert" });
  const box = h("div", { class: "fn" }, field("Function (JSON)", text), problem,
    h("button", { type: "button", class: "danger", onclick: () => box.remove() }, "Remove function"));
  box.check = () => {
    problem.textContent = "";
    const out = checkFunction(text.value);
    if (typeof out === "string") { problem.textContent = out; text.setAttribute("aria-invalid", "true"); return null; }
    text.removeAttribute("aria-invalid");
    return out;
  };
  return box;
}

/** A function definition from its JSON text, or what is wrong with it. */
export function checkFunction(text) {
  let fn;
  try { fn = JSON.parse(text); } catch (err) { return `Not valid JSON: ${err.message}`; }
  if (!fn || typeof fn !== "object" || Array.isArray(fn)) return "A function is a JSON object.";
  if (typeof fn.name !== "string" || !FUNCTION_NAME.test(fn.name)) return "name: 1 to 64 letters, digits, _ or -.";
  if (fn.description !== undefined && typeof fn.description !== "string") return "description must be a string.";
  if (fn.parameters !== undefined) {
    const p = fn.parameters;
    if (!p || typeof p !== "object" || Array.isArray(p)) return "parameters must be a JSON Schema object.";
    if (p.type !== undefined && p.type !== "object") return "parameters.type must be \"object\".";
    if (p.properties !== undefined && (typeof p.properties !== "object" || Array.isArray(p.properties))) return "parameters.properties must be an object.";
    if (p.required !== undefined && !Array.isArray(p.required)) return "parameters.required must be an array.";
  }
  return fn;
}

function ids(text) { return text.split(/[\s,]+/).filter(Boolean); }

function number(input) { return input.value.trim() === "" ? null : Number(input.value); }

async function edit(editor, a) {
  const tools = (a && a.tools) || [];
  const has = (type) => tools.some((t) => t.type === type);
  const res = (a && a.tool_resources) || {};
  const format = a && a.response_format && typeof a.response_format === "object" ? a.response_format : { type: a ? a.response_format || "auto" : "auto" };
  const name = h("input", { type: "text", value: (a && a.name) || "" });
  const list = h("datalist", { id: "model-options" });
  const model = h("input", { type: "text", list: "model-options", value: (a && a.model) || "", required: true, autocomplete: "off" });
  const instructions = h("textarea", { rows: 6 }, (a && a.instructions) || "");
  const temperature = h("input", { type: "number", min: 0, max: 2, step: 0.1, value: a && a.temperature != null ? a.temperature : "" });
  const topP = h("input", { type: "number", min: 0, max: 1, step: 0.05, value: a && a.top_p != null ? a.top_p : "" });
  const formatKind = h("select", {}, ["auto", "text", "json_object", "json_schema"].map((v) => h("option", { value: v, selected: format.type === v }, v)));
  const schema = h("textarea", { class: "mono", rows: 5 }, format.json_schema ? JSON.stringify(format.json_schema, null, 2) : "");
  const fileSearch = h("input", { type: "checkbox", checked: has("file_search") });
  const stores = h("input", { type: "text", value: ((res.file_search || {}).vector_store_ids || []).join(", ") });
  const code = h("input", { type: "checkbox", checked: has("code_interpreter") });
  const codeFiles = h("input", { type: "text", value: ((res.code_interpreter || {}).file_ids || []).join(", ") });
  const metadata = h("textarea", { class: "mono", rows: 3 }, JSON.stringify((a && a.metadata) || {}, null, 2));
  const functions = h("div");
  for (const t of tools) if (t.type === "function") functions.append(functionEditor(t.function));
  const problem = h("div", { class: "invalid", role: "alert" });

  const form = h("form", { "aria-label": a ? `Edit ${a.name || a.id}` : "New assistant" },
    h("h2", {}, a ? a.name || a.id : "New assistant"),
    a ? h("div", { class: "sub mono" }, `${a.id} · created ${when(a.created_at)}`) : null,
    field("Name", name), field("Model", model), list, field("Instructions", instructions),
    h("div", { class: "row" }, field("Temperature", temperature), field("Top P", topP)),
    field("Response format", formatKind), field("JSON schema (for json_schema)", schema),
    h("fieldset", {}, h("legend", {}, "Tools"),
      h("label", { class: "inline" }, fileSearch, "File search"),
      field("File search vector store IDs", stores, "Comma-separated vs_… ids."),
      h("label", { class: "inline" }, code, "Code interpreter"),
      field("Code interpreter file IDs", codeFiles, "Comma-separated file-… ids."),
      h("h3", {}, "Functions"), functions,
      h("button", { type: "button", class: "secondary", onclick: () => functions.append(functionEditor()) }, "Add function")),
    field("Metadata (JSON)", metadata),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save assistant"),
      a ? h("button", { type: "button", class: "danger", onclick: guard(() => remove(a)) }, "Delete assistant") : null));

  form.addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    problem.textContent = "";
    const body = collect();
    if (!body) return;
    const saved = a ? await post(`/assistants/${a.id}`, body) : await post("/assistants", body);
    location.hash = `#/assistants/${saved.id}`;
    if (a) mount(document.getElementById("main"), [saved.id]);
  }));

  function collect() {
    const fns = [...functions.children].map((box) => box.check());
    if (fns.includes(null)) { problem.textContent = "Fix the functions marked above before saving."; return null; }
    let meta;
    try { meta = JSON.parse(metadata.value || "{}"); } catch (err) { problem.textContent = `Metadata: not valid JSON: ${err.message}`; return null; }
    let responseFormat = formatKind.value;
    if (responseFormat === "json_schema") {
      try { responseFormat = { type: "json_schema", json_schema: JSON.parse(schema.value) }; } catch (err) { problem.textContent = `JSON schema: ${err.message}`; return null; }
    } else if (responseFormat !== "auto") responseFormat = { type: responseFormat };
    const toolList = [...(fileSearch.checked ? [{ type: "file_search" }] : []),
      ...(code.checked ? [{ type: "code_interpreter" }] : []),
      ...fns.map((fn) => ({ type: "function", function: fn }))];
    return {
      name: name.value || null, model: model.value.trim(), instructions: instructions.value || null,
      temperature: number(temperature), top_p: number(topP), response_format: responseFormat,
      tools: toolList, metadata: meta,
      tool_resources: {
        file_search: { vector_store_ids: fileSearch.checked ? ids(stores.value) : [] },
        code_interpreter: { file_ids: code.checked ? ids(codeFiles.value) : [] },
      },
    };
  }

  clear(editor, form);
  name.focus();
  for (const id of await models()) list.append(h("option", { value: id }));
}

async function remove(a) {
  if (!confirm(`Delete assistant ${a.name || a.id}?`)) return;
  await del(`/assistants/${a.id}`);
  location.hash = "#/assistants";
}
