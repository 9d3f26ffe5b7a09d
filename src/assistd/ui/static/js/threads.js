// Threads: recent threads (assistd's GET /v1/threads), and one thread with its messages and runs,
// following a live run through its event stream.

import { get, query, stream } from "./api.js";
import { h, clear, field, status, when } from "./dom.js";
import { Conversation, toolCalls } from "./conversation.js";
import { guard, report } from "./errors.js";

const LIVE = new Set(["queued", "in_progress", "requires_action", "cancelling"]);
const SEARCH_CONTENT = "step_details.tool_calls[*].file_search.results[*].content";

export async function mount(main, [threadId]) {
  return threadId ? thread(main, threadId) : browse(main);
}

async function browse(main) {
  const assistant = h("select", {}, h("option", { value: "" }, "Any assistant"));
  const key = h("input", { type: "text" });
  const value = h("input", { type: "text" });
  const rows = h("tbody");
  const pager = h("div", { class: "actions" });
  const form = h("form", { class: "row panel", "aria-label": "Filter threads" },
    field("Assistant", assistant), field("Metadata key", key), field("Metadata value", value),
    h("button", { type: "submit" }, "Filter"));
  clear(main, h("h1", {}, "Threads"), form,
    h("div", { class: "panel" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Thread"), h("th", {}, "Created"), h("th", {}, "Metadata"))), rows), pager));
  for (const a of (await get(`/assistants${query({ limit: 100 })}`)).data) {
    assistant.append(h("option", { value: a.id }, a.name || a.id));
  }

  async function load(after) {
    const filters = { limit: 25, after, assistant_id: assistant.value };
    if (key.value) filters[`metadata[${key.value}]`] = value.value;
    const page = await get(`/threads${query(filters)}`);
    if (!after) clear(rows);
    if (!after && !page.data.length) rows.append(h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No threads.")));
    for (const t of page.data) {
      rows.append(h("tr", {}, h("td", {}, h("a", { href: `#/threads/${t.id}`, class: "mono" }, t.id)),
        h("td", {}, when(t.created_at)), h("td", { class: "mono sub" }, JSON.stringify(t.metadata))));
    }
    clear(pager, page.has_more ? h("button", { type: "button", class: "secondary", onclick: guard(() => load(page.last_id)) }, "More threads") : null);
  }
  form.addEventListener("submit", guard((e) => { e.preventDefault(); return load(); }));
  await load();
}

async function thread(main, threadId) {
  const controller = new AbortController();
  const conv = new Conversation();
  const runs = h("div", { "aria-label": "Runs" });
  const more = h("div");
  const cards = new Map();
  clear(main, h("h1", {}, "Thread ", h("span", { class: "mono" }, threadId)),
    h("p", {}, h("a", { href: `#/playground/${threadId}` }, "Continue in the playground")),
    h("div", { class: "cols3" }, h("section", { class: "panel", "aria-label": "Messages" }, h("h2", {}, "Messages"), conv.el),
      h("section", { class: "panel" }, h("h2", {}, "Runs"), runs, more)));
  await conv.load(threadId);

  async function loadRuns(after) {
    const page = await get(`/threads/${threadId}/runs${query({ limit: 10, after })}`);
    if (!after && !page.data.length) runs.append(h("p", { class: "empty" }, "No runs."));
    for (const run of page.data) {
      const card = h("article", { class: "run panel", "data-run": run.id });
      cards.set(run.id, card);
      runs.append(card);
      showRun(card, run);
    }
    clear(more, page.has_more ? h("button", { type: "button", class: "secondary", onclick: guard(() => loadRuns(page.last_id)) }, "More runs") : null);
    return page.data;
  }

  const [latest] = await loadRuns();
  if (latest && LIVE.has(latest.status)) followLive(latest);

  /** Follow a run still going: its events update the messages and its card as they come. */
  function followLive(run) {
    const card = cards.get(run.id);
    stream("GET", `/threads/${threadId}/runs/${run.id}/events`, undefined, (event, data) => {
      conv.handle(event, data);
      if (event.startsWith("thread.run.") && !event.startsWith("thread.run.step.")) showRun(card, data);
      if (event.startsWith("thread.run.step.") && event !== "thread.run.step.delta") showSteps(card, data.run_id, data.thread_id);
    }, { signal: controller.signal }).catch(report);
  }

  return () => controller.abort();
}

function showRun(card, run) {
  const usage = run.usage ? `${run.usage.prompt_tokens} prompt + ${run.usage.completion_tokens} completion = ${run.usage.total_tokens}` : "—";
  const rows = [
    ["Status", status(run.status)], ["Model", run.model], ["Assistant", run.assistant_id],
    ["Created", when(run.created_at)], ["Started", when(run.started_at)],
    ["Completed", when(run.completed_at)], ["Failed", when(run.failed_at)], ["Cancelled", when(run.cancelled_at)],
    ["Expires", when(run.expires_at)], ["Duration", duration(run)], ["Tokens", usage],
    ["Last error", run.last_error ? `${run.last_error.code}: ${run.last_error.message}` : "—"],
    ["Incomplete", run.incomplete_details ? run.incomplete_details.reason : "—"],
  ];
  const steps = card.querySelector(".run-steps") || h("div", { class: "run-steps" });
  clear(card, h("h3", { class: "mono" }, run.id),
    h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])), steps);
  if (!steps.dataset.loaded) showSteps(card, run.id, run.thread_id);
}

function duration(run) {
  const end = run.completed_at || run.failed_at || run.cancelled_at;
  return run.started_at && end ? `${end - run.started_at} s` : "—";
}

async function showSteps(card, runId, thread) {
  const steps = card.querySelector(".run-steps");
  steps.dataset.loaded = "1";
  try {
    const page = await get(`/threads/${thread}/runs/${runId}/steps${query({ limit: 100, order: "asc", "include[]": SEARCH_CONTENT })}`);
    clear(steps, page.data.length ? h("div", { class: "sub" }, `Steps (${page.data.length})`) : null,
      page.data.map((s) => h("div", { class: "step" }, h("div", { class: "sub" }, `${s.type} · `, status(s.status)),
        s.step_details.type === "tool_calls" ? toolCalls(s.step_details.tool_calls) : null)));
  } catch (err) { report(err); }
}
