// Files: upload with a progress bar, list, delete.

import { del, get, query, upload } from "./api.js";
import { h, clear, field, bytes, when } from "./dom.js";
import { download } from "./conversation.js";
import { guard } from "./errors.js";

export async function mount(main) {
  const file = h("input", { type: "file", required: true });
  const purpose = h("select", {}, ["assistants", "user_data", "vision", "batch"].map((p) => h("option", { value: p }, p)));
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Upload progress" });
  const done = h("div", { class: "sub", role: "status" });
  const rows = h("tbody");
  const pager = h("div", { class: "actions" });
  const form = h("form", { class: "panel", "aria-label": "Upload a file" },
    h("div", { class: "row" }, field("File", file), field("Purpose", purpose), h("button", { type: "submit" }, "Upload")),
    progress, done);
  clear(main, h("h1", {}, "Files"), form,
    h("div", { class: "panel" }, h("table", {}, h("thead", {}, h("tr", {},
      ["File", "Name", "Size", "Purpose", "Created", ""].map((t) => h("th", {}, t)))), rows), pager));

  form.addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    progress.value = 0;
    const uploaded = await upload(file.files[0], purpose.value, (p) => { progress.value = p; });
    progress.value = 1;
    done.textContent = `Uploaded ${uploaded.filename} as ${uploaded.id}.`;
    file.value = "";
    await load();
  }));

  async function load(after) {
    const page = await get(`/files${query({ limit: 50, after })}`);
    if (!after) clear(rows);
    if (!after && !page.data.length) rows.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No files.")));
    for (const f of page.data) {
      const row = h("tr", { "data-file": f.id },
        h("td", { class: "mono" }, f.id),
        h("td", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); download(f.id); } }, f.filename)),
        h("td", {}, bytes(f.bytes)), h("td", {}, f.purpose), h("td", {}, when(f.created_at)),
        h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Delete ${f.filename}`,
          onclick: guard(async () => { await del(`/files/${f.id}`); row.remove(); }) }, "Delete")));
      rows.append(row);
    }
    clear(pager, page.has_more ? h("button", { type: "button", class: "secondary", onclick: guard(() => load(page.last_id)) }, "More files") : null);
  }
  await load();
}
