// The console's only way to the server: the public /v1 API, with the user's key.

const KEY = "assistd.apiKey";
let onUnauthorized = () => {};

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function getKey() { return sessionStorage.getItem(KEY) || ""; }
export function setKey(key) { key ? sessionStorage.setItem(KEY, key) : sessionStorage.removeItem(KEY); }
export function whenUnauthorized(handler) { onUnauthorized = handler; }

function headers(extra = {}) {
  const out = { "OpenAI-Beta": "assistants=v2", ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function failure(response) {
  let body = null;
  let message = `${response.status} ${response.statusText}`;
  try {
    body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401) onUnauthorized(message);
  return new ApiError(response.status, message, body);
}

/** A JSON request to /v1; resolves to the parsed answer, rejects with an ApiError. */
export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/v1${path}`, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body = {}, opts) => api("POST", path, body, opts);
export const del = (path) => api("DELETE", path);

/** `?a=1&b=2` from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.append(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** A file's bytes as a blob: URL (the browser can't send the key for <img src>). */
const blobs = new Map();
export async function fileUrl(fileId) {
  if (!blobs.has(fileId)) {
    blobs.set(fileId, (async () => {
      const response = await fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, { headers: headers() });
      if (!response.ok) throw await failure(response);
      return URL.createObjectURL(await response.blob());
    })());
    blobs.get(fileId).catch(() => blobs.delete(fileId));
  }
  return blobs.get(fileId);
}

/**
 * Server-Sent Events from a POST (or GET) to /v1: calls onEvent(name, data) for each frame.
 * Resolves when the stream ends.
 */
export async function stream(method, path, body, onEvent, { signal } = {}) {
  const init = { method, headers: headers({ Accept: "text/event-stream" }), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/v1${path}`, init);
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      dispatch(buffer.slice(0, cut), onEvent);
      buffer = buffer.slice(cut + 2);
    }
  }
  if (buffer.trim()) dispatch(buffer, onEvent);
}

function dispatch(frame, onEvent) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  const text = data.join("\n");
  if (text === "[DONE]") return onEvent("done", null);
  let parsed;
  try { parsed = JSON.parse(text); } catch { parsed = text; }
  onEvent(event, parsed);
}

/** Upload with progress (fetch can't report upload progress; XMLHttpRequest can). */
export function upload(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* keep null */ }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const message = (body && body.error && body.error.message) || `${xhr.status} ${xhr.statusText}`;
      if (xhr.status === 401) onUnauthorized(message);
      reject(new ApiError(xhr.status, message, body));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "The upload failed: network error.")));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file);
    xhr.send(form);
  });
}
