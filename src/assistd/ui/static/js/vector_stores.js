// Vector stores: create, add files (ingestion status updates live), search.

import { del, get, post, query, upload } from "./api.js";
import { h, clear, field, bytes, status, when } from "./dom.js";
import { guard, report } from "./errors.js";

const POLL_MS = 1000;

export async function mount(main, [storeId]) {
  return storeId ? store(main, storeId) : browse(main);
}

async function browse(main) {
  const name = h("input", { type: "text" });
  const rows = h("tbody");
  const pager = h("div", { class: "actions" });
  const form = h("form", { class: "row panel", "aria-label": "New vector store" },
    field("Name", name), h("button", { type: "submit" }, "Create vector store"));
  clear(main, h("h1", {}, "Vector stores"), form,
    h("div", { class: "panel" }, h("table", {}, h("thead", {}, h("tr", {},
      ["Store", "Name", "Files", "Size", "Status", "Created"].map((t) => h("th", {}, t)))), rows), pager));
  form.addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    const made = await post("/vector_stores", { name: name.value || undefined });
    location.hash = `#/vector_stores/${made.id}`;
  }));
  async function load(after) {
    const page = await get(`/vector_stores${query({ limit: 50, after })}`);
    if (!after && !page.data.length) rows.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No vector stores.")));
    for (const s of page.data) {
      rows.append(h("tr", {}, h("td", {}, h("a", { href: `#/vector_stores/${s.id}`, class: "mono" }, s.id)),
        h("td", {}, s.name || ""), h("td", {}, `${s.file_counts.completed}/${s.file_counts.total}`),
        h("td", {}, bytes(s.usage_bytes)), h("td", {}, status(s.status)), h("td", {}, when(s.created_at))));
    }
    clear(pager, page.has_more ? h("button", { type: "button", class: "secondary", onclick: guard(() => load(page.last_id)) }, "More vector stores") : null);
  }
  await load();
}

async function store(main, storeId) {
  let timer = 0;
  let gone = false;
  const info = h("div");
  const rows = h("tbody");
  const pick = h("select", {});
  const file = h("input", { type: "file" });
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const search = h("input", { type: "search" });
  const results = h("div", { "aria-live": "polite" });
  const addForm = h("form", { class: "panel", "aria-label": "Add a file" },
    h("h2", {}, "Add a file"),
    field("Existing file", pick), field("Or upload a file", file), progress,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Add file")));
  const searchForm = h("form", { class: "panel", role: "search", "aria-label": "Search this store" },
    h("div", { class: "row" }, field("Search query", search), h("button", { type: "submit" }, "Search")), results);
  clear(main, h("h1", {}, "Vector store ", h("span", { class: "mono" }, storeId)), info,
    h("div", { class: "cols3" },
      h("div", {}, h("section", { class: "panel", "aria-label": "Files in this store" },
        h("table", {}, h("thead", {}, h("tr", {}, ["File", "Status", "Size", "Error", ""].map((t) => h("th", {}, t)))), rows)),
      searchForm),
      addForm));

  pick.append(h("option", { value: "" }, "—"));
  for (const f of (await get(`/files${query({ limit: 100 })}`)).data) pick.append(h("option", { value: f.id }, `${f.filename} (${f.id})`));

  async function refresh() {
    const [s, files] = await Promise.all([get(`/vector_stores/${storeId}`),
      get(`/vector_stores/${storeId}/files${query({ limit: 100 })}`)]);
    clear(info, h("p", { class: "sub" }, `${s.name || "(unnamed)"} · `, status(s.status),
      ` · ${s.file_counts.completed} of ${s.file_counts.total} files ready · ${bytes(s.usage_bytes)}`));
    clear(rows, files.data.length ? null : h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No files yet.")));
    for (const f of files.data) {
      rows.append(h("tr", { "data-file": f.id }, h("td", { class: "mono" }, f.id), h("td", {}, status(f.status)),
        h("td", {}, bytes(f.usage_bytes)), h("td", {}, f.last_error ? f.last_error.message : ""),
        h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Remove ${f.id}`,
          onclick: guard(async () => { await del(`/vector_stores/${storeId}/files/${f.id}`); await refresh(); }) }, "Remove"))));
    }
    clearTimeout(timer);
    if (!gone && files.data.some((f) => f.status === "in_progress")) timer = setTimeout(() => refresh().catch(report), POLL_MS);
  }

  addForm.addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    let fileId = pick.value;
    if (file.files[0]) {
      progress.hidden = false;
      fileId = (await upload(file.files[0], "assistants", (p) => { progress.value = p; })).id;
      file.value = "";
      progress.hidden = true;
    }
    if (!fileId) throw new Error("Pick a file or choose one to upload.");
    await post(`/vector_stores/${storeId}/files`, { file_id: fileId });
    await refresh();
  }));

  searchForm.addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    const found = await post(`/vector_stores/${storeId}/search`, { query: search.value, max_num_results: 10 });
    clear(results, found.data.length ? null : h("p", { class: "empty" }, "Nothing found."),
      found.data.map((r) => h("div", { class: "result" },
        h("div", {}, h("strong", {}, r.filename), " ", h("span", { class: "score" }, `score ${r.score.toFixed(3)}`)),
        r.content.map((c) => h("div", { class: "chunk sub" }, c.text)))));
  }));

  await refresh();
  return () => { gone = true; clearTimeout(timer); };
}
