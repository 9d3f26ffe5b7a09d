// Playground: pick an assistant, chat in a thread with streaming, see tool calls as they
// happen, answer function calls by hand, cancel a run.

import { get, post, query, stream, upload } from "./api.js";
import { h, clear, field } from "./dom.js";
import { Conversation } from "./conversation.js";
import { guard, report } from "./errors.js";

const LIVE = new Set(["queued", "in_progress", "requires_action", "cancelling"]);

export async function mount(main, [threadId]) {
  const controller = new AbortController();
  const state = { threadId: threadId || null, run: null };
  const assistant = h("select", { required: true });
  const threadLabel = h("span", { class: "sub mono" });
  const outputs = h("div");
  const conv = new Conversation({ onRequiresAction: (run) => toolOutputsForm(run) });
  const message = h("textarea", { rows: 3, placeholder: "Ask something. Enter sends, Shift+Enter for a new line." });
  const attach = h("input", { type: "file" });
  const attachFor = h("select", {}, h("option", { value: "file_search" }, "file_search"), h("option", { value: "code_interpreter" }, "code_interpreter"));
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const send = h("button", { type: "submit" }, "Send");
  const cancel = h("button", { type: "button", class: "danger", disabled: true }, "Cancel run");

  const form = h("form", { class: "composer panel", "aria-label": "Composer" },
    field("Message", message),
    h("div", { class: "row" }, field("Attach file", attach), field("Attach for", attachFor)),
    progress,
    h("div", { class: "actions" }, send, cancel));

  clear(main, h("h1", {}, "Playground"),
    h("div", { class: "row panel" }, field("Assistant", assistant),
      h("div", { class: "shrink" }, h("button", { type: "button", class: "secondary", onclick: () => { location.hash = "#/playground"; } }, "New thread")),
      h("div", { class: "shrink" }, threadLabel)),
    h("div", { class: "panel" }, conv.el, outputs), form);

  const showThread = () => {
    clear(threadLabel, state.threadId ? h("a", { href: `#/threads/${state.threadId}` }, state.threadId) : "New thread");
  };
  showThread();

  const assistants = await get(`/assistants${query({ limit: 100 })}`);
  for (const a of assistants.data) assistant.append(h("option", { value: a.id }, `${a.name || "(unnamed)"} — ${a.model}`));
  if (!assistants.data.length) assistant.append(h("option", { value: "" }, "No assistants: make one first"));
  const remembered = sessionStorage.getItem("assistd.playground.assistant");
  if (remembered && assistants.data.some((a) => a.id === remembered)) assistant.value = remembered;
  assistant.addEventListener("change", () => sessionStorage.setItem("assistd.playground.assistant", assistant.value));

  function busy(running) {
    send.disabled = running;
    cancel.disabled = !running;
  }

  /** Feed a run's event stream to the conversation until it ends. */
  async function follow(method, path, body) {
    busy(true);
    try {
      await stream(method, path, body, (event, data) => {
        if (event.startsWith("thread.run.") && !event.startsWith("thread.run.step.")) state.run = data;
        conv.handle(event, data);
      }, { signal: controller.signal });
    } finally {
      busy(state.run && LIVE.has(state.run.status) && state.run.status !== "requires_action");
    }
  }

  function toolOutputsForm(run) {
    const calls = run.required_action.submit_tool_outputs.tool_calls;
    const boxes = calls.map((c) => h("textarea", { rows: 2, class: "mono", "data-call": c.id }));
    const submit = h("button", { type: "submit" }, "Submit outputs");
    const box = h("form", { class: "panel", "aria-label": "Tool outputs" },
      h("h3", {}, "The run needs tool outputs"),
      calls.map((c, i) => h("div", {}, h("div", { class: "sub mono" }, `${c.function.name}(${c.function.arguments})`),
        field(`Output for ${c.function.name}`, boxes[i]))),
      h("div", { class: "actions" }, submit));
    box.addEventListener("submit", guard(async (e) => {
      e.preventDefault();
      submit.disabled = true;
      const tool_outputs = calls.map((c, i) => ({ tool_call_id: c.id, output: boxes[i].value }));
      box.remove();
      try {
        await follow("POST", `/threads/${run.thread_id}/runs/${run.id}/submit_tool_outputs`, { tool_outputs, stream: true });
      } catch (err) { outputs.append(box); submit.disabled = false; throw err; }
    }));
    clear(outputs, box);
    boxes[0].focus();
  }

  async function attachment() {
    const file = attach.files[0];
    if (!file) return [];
    progress.hidden = false;
    progress.value = 0;
    const uploaded = await upload(file, "assistants", (p) => { progress.value = p; });
    attach.value = "";
    progress.hidden = true;
    return [{ file_id: uploaded.id, tools: [{ type: attachFor.value }] }];
  }

  form.addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    if (!assistant.value) throw new Error("Pick an assistant first (make one under Assistants).");
    if (!message.value.trim()) return;
    busy(true);
    try {
      const attachments = await attachment();
      if (!state.threadId) {
        state.threadId = (await post("/threads", {})).id;
        conv.threadId = state.threadId;
        history.replaceState(null, "", `#/playground/${state.threadId}`);
        showThread();
      }
      const body = { role: "user", content: message.value, ...(attachments.length ? { attachments } : {}) };
      conv.upsertMessage(await post(`/threads/${state.threadId}/messages`, body));
      message.value = "";
      clear(outputs);
      await follow("POST", `/threads/${state.threadId}/runs`, { assistant_id: assistant.value, stream: true });
    } catch (err) { busy(false); throw err; }
  }));

  message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
  });

  cancel.addEventListener("click", guard(async () => {
    if (!state.run) return;
    cancel.disabled = true;
    await post(`/threads/${state.run.thread_id}/runs/${state.run.id}/cancel`, {});
  }));

  if (state.threadId) await resume();
  message.focus();
  return () => controller.abort();

  /** An opened thread: its messages, and its latest run followed if it is still going. */
  async function resume() {
    await conv.load(state.threadId);
    const [latest] = (await get(`/threads/${state.threadId}/runs${query({ limit: 1 })}`)).data;
    if (!latest || !LIVE.has(latest.status)) return;
    state.run = latest;
    conv.runEvent(latest);
    if (latest.status !== "requires_action") {
      follow("GET", `/threads/${state.threadId}/runs/${latest.id}/events`).catch(report);
    }
  }
}
