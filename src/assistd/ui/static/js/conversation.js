// A thread's messages and a run's steps, from history and from live events. Deltas and
// completed objects both render; a completed object replaces what its deltas built.

import { fileUrl, get, query } from "./api.js";
import { h, clear, status } from "./dom.js";
import { render } from "./md.js";
import { report } from "./errors.js";

const SEARCH_CONTENT = "step_details.tool_calls[*].file_search.results[*].content";
const PAGE = 20;

export class Conversation {
  constructor({ onRequiresAction } = {}) {
    this.el = h("section", { class: "chat", "aria-label": "Conversation" });
    this.older = h("div");
    this.list = h("div", { class: "chat" });
    this.el.append(this.older, this.list);
    this.messages = new Map(); // id -> { data, el }
    this.steps = new Map(); // id -> { data, el }
    this.onRequiresAction = onRequiresAction;
    this.pending = new Set();
    this.frame = 0;
  }

  reset() {
    clear(this.older);
    clear(this.list);
    this.messages.clear();
    this.steps.clear();
  }

  /** The newest page of messages; older pages on request, so long threads stay quick. */
  async load(threadId) {
    this.reset();
    this.threadId = threadId;
    const page = await get(`/threads/${threadId}/messages${query({ limit: PAGE, order: "desc" })}`);
    for (const m of page.data.slice().reverse()) this.upsertMessage(m);
    this.olderButton(page);
  }

  olderButton(page) {
    clear(this.older);
    if (!page.has_more) return;
    const button = h("button", { type: "button", class: "secondary", onclick: () => this.loadOlder(page.last_id, button) },
      "Load older messages");
    this.older.append(button);
  }

  async loadOlder(after, button) {
    button.disabled = true;
    try {
      const page = await get(`/threads/${this.threadId}/messages${query({ limit: PAGE, order: "desc", after })}`);
      for (const m of page.data) { // newest first: each goes on top of the one before
        const entry = this.entry(m, true);
        this.list.insertBefore(entry.el, this.list.firstChild);
        this.paint(entry);
      }
      this.olderButton(page);
    } catch (err) { button.disabled = false; report(err); }
  }

  // ------------------------------------------------------------ events

  /** One streamed event (name, data) from a run's SSE stream. */
  handle(event, data) {
    if (event.startsWith("thread.message.")) {
      if (event === "thread.message.delta") this.messageDelta(data);
      else this.upsertMessage(data);
    } else if (event.startsWith("thread.run.step.")) {
      if (event === "thread.run.step.delta") this.stepDelta(data);
      else this.upsertStep(data);
    } else if (event.startsWith("thread.run.")) {
      this.runEvent(data);
    } else if (event === "error") {
      report(new Error((data && data.message) || (data && data.error && data.error.message) || "The stream reported an error."));
    }
  }

  runEvent(run) {
    if (!this.runLine || this.runLine.dataset.run !== run.id) {
      this.runLine = h("div", { class: "runline sub", role: "status", "data-run": run.id });
    }
    this.list.append(this.runLine); // the run's status stays below what it wrote
    clear(this.runLine, `Run ${run.id}: `, status(run.status));
    if (run.last_error) this.runLine.append(" — ", h("span", { class: "invalid" }, `${run.last_error.code}: ${run.last_error.message}`));
    if (run.incomplete_details) this.runLine.append(` — incomplete: ${run.incomplete_details.reason}`);
    this.run = run;
    if (run.status === "requires_action" && this.onRequiresAction) this.onRequiresAction(run);
  }

  // ------------------------------------------------------------ messages

  entry(message, detached = false) {
    let entry = this.messages.get(message.id);
    if (!entry) {
      entry = { data: message, el: h("article", { class: `msg ${message.role}`, "data-id": message.id }) };
      this.messages.set(message.id, entry);
      if (!detached) this.list.append(entry.el);
    }
    return entry;
  }

  upsertMessage(message) {
    const entry = this.entry(message);
    entry.data = message;
    this.paint(entry);
  }

  messageDelta({ id, delta }) {
    const entry = this.entry({ id, role: "assistant", content: [] });
    const content = entry.data.content || (entry.data.content = []);
    for (const part of delta.content || []) {
      const at = part.index ?? content.length;
      const have = content[at] || (content[at] = { type: part.type });
      if (part.type === "text") {
        have.text = have.text || { value: "", annotations: [] };
        have.text.value += (part.text && part.text.value) || "";
        const notes = have.text.annotations;
        for (const a of (part.text && part.text.annotations) || []) notes[a.index ?? notes.length] = a;
      } else {
        Object.assign(have, part);
      }
    }
    this.schedule(entry);
  }

  /** Repaint at most once a frame, however fast the deltas come. */
  schedule(entry) {
    this.pending.add(entry);
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      for (const e of this.pending) this.paint(e);
      this.pending.clear();
    });
  }

  paint(entry) {
    const m = entry.data;
    const parts = (m.content || []).filter(Boolean).map((part) => contentPart(part));
    const attached = (m.attachments || []).map((a) => h("div", { class: "sub" },
      `Attached ${a.file_id} for ${(a.tools || []).map((t) => t.type).join(", ")}`));
    const badge = m.status && m.status !== "completed" ? h("span", { class: "sub" }, ` (${m.status})`) : null;
    clear(entry.el, h("div", { class: "who" }, m.role || "assistant", badge), parts, attached);
  }

  // ------------------------------------------------------------ steps

  upsertStep(step) {
    let entry = this.steps.get(step.id);
    if (!entry) {
      entry = { data: step, el: h("div", { class: "steps", "data-step": step.id }) };
      this.steps.set(step.id, entry);
      this.list.append(entry.el);
    }
    entry.data = step;
    if (step.step_details && step.step_details.type === "tool_calls") {
      clear(entry.el, toolCalls(step.step_details.tool_calls || []));
      if (step.status === "completed" && hasSearch(step)) this.searchResults(step, entry);
    }
  }

  stepDelta({ id, delta }) {
    const entry = this.steps.get(id);
    const details = delta.step_details;
    if (!entry || !details || details.type !== "tool_calls") return;
    const calls = entry.data.step_details.tool_calls || (entry.data.step_details.tool_calls = []);
    for (const call of details.tool_calls || []) mergeCall(calls, call);
    clear(entry.el, toolCalls(calls));
  }

  /** A file_search step's results with their text: asked for once the step is done. */
  async searchResults(step, entry) {
    try {
      const full = await get(`/threads/${step.thread_id}/runs/${step.run_id}/steps/${step.id}${query({ "include[]": SEARCH_CONTENT })}`);
      entry.data = full;
      clear(entry.el, toolCalls(full.step_details.tool_calls || []));
    } catch (err) { report(err); }
  }
}

function hasSearch(step) {
  return (step.step_details.tool_calls || []).some((c) => c.type === "file_search");
}

function mergeCall(calls, delta) {
  const at = delta.index ?? calls.length;
  const call = calls[at] || (calls[at] = { id: delta.id, type: delta.type });
  if (delta.id) call.id = delta.id;
  if (delta.type === "code_interpreter") {
    const ci = call.code_interpreter || (call.code_interpreter = { input: "", outputs: [] });
    const d = delta.code_interpreter || {};
    ci.input += d.input || "";
    for (const out of d.outputs || []) ci.outputs.push(out);
  } else if (delta.type === "function") {
    const fn = call.function || (call.function = { name: "", arguments: "", output: null });
    const d = delta.function || {};
    fn.name = d.name || fn.name;
    fn.arguments += d.arguments || "";
    if (d.output !== undefined && d.output !== null) fn.output = d.output;
  } else {
    call[delta.type] = delta[delta.type] || call[delta.type];
  }
}

// ------------------------------------------------------------ rendering parts

export function contentPart(part) {
  if (part.type === "text") return textPart(part.text || { value: "" });
  if (part.type === "image_file") return image(part.image_file.file_id);
  if (part.type === "image_url") return h("div", { class: "sub" }, "Image: ", part.image_url.url);
  if (part.type === "refusal") return h("p", { class: "invalid" }, part.refusal);
  return h("pre", {}, JSON.stringify(part, null, 2));
}

export function image(fileId, alt = `Image ${fileId}`) {
  const img = h("img", { alt, "data-file": fileId });
  fileUrl(fileId).then((url) => { img.src = url; }, report);
  return img;
}

/** Text with its annotations: each annotated span becomes a link to the file it cites. */
function textPart(text) {
  let value = text.value || "";
  const marks = [];
  const annotations = (text.annotations || []).filter((a) => a && a.text)
    .sort((a, b) => (b.start_index ?? 0) - (a.start_index ?? 0));
  for (const a of annotations) {
    const node = citation(a, annotations.length - marks.length);
    const sentinel = `\uE000${marks.length}\uE001`;
    marks.push(node);
    const s = a.start_index;
    if (Number.isInteger(s) && value.slice(s, a.end_index) === a.text) {
      value = value.slice(0, s) + sentinel + value.slice(a.end_index);
    } else if (value.includes(a.text)) {
      value = value.replace(a.text, sentinel);
    } else {
      value += ` ${sentinel}`;
    }
  }
  return render(value, marks);
}

function citation(annotation, n) {
  const fileId = (annotation.file_citation || annotation.file_path || {}).file_id;
  const isPath = annotation.type === "file_path";
  const link = h("a", { href: "#", class: "cite", "data-file": fileId || "", title: fileId || annotation.text },
    isPath ? annotation.text.replace(/^sandbox:\/mnt\/data\//, "") : `[${n}]`);
  if (!fileId) return link;
  link.addEventListener("click", (e) => { e.preventDefault(); download(fileId); });
  get(`/files/${fileId}`).then((f) => { link.title = f.filename; if (!isPath) link.textContent = `[${n}: ${f.filename}]`; },
    () => {}); // the name is a nicety; the link still works without it
  return link;
}

export async function download(fileId) {
  try {
    const [meta, url] = await Promise.all([get(`/files/${fileId}`), fileUrl(fileId)]);
    const a = h("a", { href: url, download: meta.filename });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) { report(err); }
}

export function toolCalls(calls) {
  return calls.filter(Boolean).map((call) => {
    if (call.type === "code_interpreter") return codeCall(call);
    if (call.type === "file_search") return searchCall(call);
    if (call.type === "function") return functionCall(call);
    return h("details", { class: "tool" }, h("summary", {}, call.type), h("pre", {}, JSON.stringify(call, null, 2)));
  });
}

function codeCall(call) {
  const ci = call.code_interpreter || { input: "", outputs: [] };
  const outputs = (ci.outputs || []).map((o) => o.type === "image" ? image(o.image.file_id, "Chart from code interpreter")
    : h("pre", { class: "logs" }, o.logs));
  return h("details", { class: "tool", open: true, "data-type": "code_interpreter" },
    h("summary", {}, "Code interpreter"), h("pre", {}, h("code", {}, ci.input || "")),
    outputs.length ? h("div", { class: "sub" }, "Output") : null, outputs);
}

function searchCall(call) {
  const fs = call.file_search || {};
  const results = fs.results || [];
  return h("details", { class: "tool", open: true, "data-type": "file_search" },
    h("summary", {}, `File search — ${results.length} result${results.length === 1 ? "" : "s"}`),
    fs.query ? h("div", {}, "Query: ", fs.query) : null,
    results.map((r) => h("div", { class: "result" },
      h("div", {}, h("strong", {}, r.file_name || r.file_id), " ", h("span", { class: "score" }, `score ${Number(r.score).toFixed(3)}`)),
      (r.content || []).map((c) => h("div", { class: "chunk sub" }, c.text)))));
}

function functionCall(call) {
  const fn = call.function || {};
  return h("details", { class: "tool", open: true, "data-type": "function" },
    h("summary", {}, `Function ${fn.name || ""}`),
    h("div", { class: "sub" }, "Arguments"), h("pre", {}, prettyJson(fn.arguments || "")),
    fn.output !== null && fn.output !== undefined ? [h("div", { class: "sub" }, "Output"), h("pre", {}, fn.output)] : null);
}

function prettyJson(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}
