// A small Markdown renderer for untrusted model output. It builds DOM nodes and puts every piece
// of text in with textContent, so no part of the input is ever parsed as HTML. Supported:
// headings, paragraphs, lists, bold, italic, inline code, fenced code blocks, links (http,
// https, mailto only). `marks` maps a private-use placeholder to a node (citations).

import { h } from "./dom.js";

const SAFE_SCHEME = /^(https?:|mailto:)/i;
export const MARK = /\uE000(\d+)\uE001/;

export function render(text, marks = []) {
  const root = h("div", { class: "md" });
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```|~~~)\s*([\w+-]*)/);
    if (fence) {
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
      i++;
      const code = h("code", fence[2] ? { "data-lang": fence[2] } : {}, body.join("\n"));
      root.append(h("pre", {}, code));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      root.append(h(`h${Math.min(heading[1].length + 2, 6)}`, {}, inline(heading[2], marks)));
      i++;
      continue;
    }
    if (isItem(line)) {
      const ordered = /^\s*\d+[.)]\s/.test(line);
      const list = h(ordered ? "ol" : "ul");
      for (; i < lines.length && isItem(lines[i]); i++) {
        list.append(h("li", {}, inline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, ""), marks)));
      }
      root.append(list);
      continue;
    }
    if (!line.trim()) { i++; continue; }
    const para = [];
    for (; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) para.push(lines[i]);
    const p = h("p");
    para.forEach((l, n) => { if (n) p.append(h("br")); p.append(...inline(l, marks)); });
    root.append(p);
  }
  return root;
}

function isItem(line) { return /^\s*([-*+]|\d+[.)])\s+/.test(line); }
function startsBlock(line) { return /^\s*(```|~~~)/.test(line) || /^#{1,6}\s/.test(line) || isItem(line); }

// Earliest match wins; ties go to the rule listed first.
const RULES = [
  ["code", /`([^`]+)`/],
  ["mark", MARK],
  ["link", /\[([^\]]+)\]\(([^)\s]+)\)/],
  ["bold", /\*\*(.+?)\*\*|__(.+?)__/],
  ["italic", /\*([^*\s][^*]*?)\*|\b_([^_\s][^_]*?)_\b/],
];

export function inline(text, marks = []) {
  const out = [];
  let rest = text;
  while (rest) {
    let best = null;
    for (const [kind, re] of RULES) {
      const m = re.exec(rest);
      if (m && (!best || m.index < best.m.index)) best = { kind, m };
    }
    if (!best) { out.push(rest); break; }
    const { kind, m } = best;
    if (m.index) out.push(rest.slice(0, m.index));
    out.push(token(kind, m, marks));
    rest = rest.slice(m.index + m[0].length);
  }
  return out;
}

function token(kind, m, marks) {
  if (kind === "code") return h("code", {}, m[1]);
  if (kind === "mark") return marks[Number(m[1])] || "";
  if (kind === "bold") return h("strong", {}, inline(m[1] ?? m[2], marks));
  if (kind === "italic") return h("em", {}, inline(m[1] ?? m[2], marks));
  const [, label, href] = m;
  if (!SAFE_SCHEME.test(href)) return h("span", {}, inline(label, marks));
  return h("a", { href, target: "_blank", rel: "noopener noreferrer" }, inline(label, marks));
}
