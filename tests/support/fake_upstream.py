"""A scripted fake Chat Completions upstream: a real HTTP server on 127.0.0.1.

It speaks OpenAI's streaming wire format (`data: {chat.completion.chunk}` … `data: [DONE]`),
serves scripted replies (text at a chosen pace, parallel tool calls, `finish_reason: length`,
HTTP errors, dropped connections, hangs) and logs every request with when and how it ended —
in particular the moment the client (assistd) closed the connection, which is what a cancel
must cause.

In tests::

    with FakeUpstream() as up:
        up.on("weather", Reply.tool_calls([("get_weather", '{"city": "Paris"}')]))
        ...  # point a client at up.base_url
        up.wait_for_outcome(0, "completed")

Run on its own for benchmarks: `python -m tests.support.fake_upstream --port 0 --tokens 50
--chunk-delay 0.02` prints `READY <base_url>` and streams that reply for every request;
`GET /stats` and `GET /log?since=K` report what happened.

Every response is `Connection: close`: one TCP connection carries one request, so the client
closing its end shows up as EOF on that socket, which is watched while the reply is sent.
Streams use chunked transfer encoding, so a dropped connection is a broken body to the client
(httpx raises RemoteProtocolError, which the SDK turns into openai.APIConnectionError).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]
OUTCOMES = ("completed", "client_closed", "dropped", "error")


# ---------------------------------------------------------------- the script


DEFAULT_MODELS = ({"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake-upstream"},)


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Build it with the constructors, not the fields."""

    kind: str  # text | tool_calls | error | drop | hang | stream_error | keep_alive | refuse | raw_data
    chunks: tuple[str, ...] = ()  # content deltas (for tool_calls: text sent before the calls)
    calls: tuple[tuple[str, str], ...] = ()  # (function name, arguments JSON)
    chunk_delay: float = 0.0
    finish_reason: str | None = "stop"
    status: int = 200
    message: str = ""
    error_type: str | None = None
    error_code: str | None = None
    usage: Obj | None = None  # overrides prompt_tokens / completion_tokens
    before_headers: bool = False  # hang: send nothing at all
    keep_alive_every: float = 0.0  # keep_alive: seconds between SSE comments
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers (e.g. Retry-After)
    raw: tuple[bytes, ...] = ()  # raw_data: SSE bytes sent as they are, after the content chunks

    @staticmethod
    def text(text: str = "", *, chunk_delay: float = 0.0, chunks: list[str] | None = None,
             finish_reason: str | None = "stop", usage: Obj | None = None) -> Reply:
        """Text streamed as word chunks (spaces kept), `chunk_delay` seconds apart.

        `chunks` gives the exact deltas instead; `finish_reason=None` ends the stream with
        [DONE] but no finish chunk (a truncated completion).
        """
        parts = tuple(chunks) if chunks is not None else tuple(split_words(text))
        return Reply("text", parts, chunk_delay=chunk_delay, finish_reason=finish_reason, usage=usage)

    @staticmethod
    def tool_calls(calls: Iterable[tuple[str, str]], *, text: str = "", chunk_delay: float = 0.0,
                   usage: Obj | None = None) -> Reply:
        """Parallel function calls (ids `call_…`, arguments in two pieces), optionally after text."""
        return Reply("tool_calls", tuple(split_words(text)) if text else (), calls=tuple(calls),
                     chunk_delay=chunk_delay, finish_reason="tool_calls", usage=usage)

    @staticmethod
    def error(status: int, message: str = "scripted upstream error", *, type: str | None = None,
              code: str | None = None, retry_after: str | None = None) -> Reply:
        """An HTTP error with OpenAI's envelope `{"error": {message, type, param, code}}`
        (and a `Retry-After` header when given)."""
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return Reply("error", status=status, message=message, error_type=type, error_code=code,
                     finish_reason=None, headers=headers)

    @staticmethod
    def drop(after_chunks: int = 1, *, chunk_delay: float = 0.0) -> Reply:
        """Stream `after_chunks` content chunks, then abort the TCP connection (no [DONE])."""
        return Reply("drop", tuple(f"part{i} " for i in range(after_chunks)), chunk_delay=chunk_delay,
                     finish_reason=None)

    @staticmethod
    def hang(*, after_chunks: int = 0, before_headers: bool = False) -> Reply:
        """Send `after_chunks` content chunks (or no headers at all), then wait for the client to leave."""
        return Reply("hang", tuple(f"part{i} " for i in range(after_chunks)), finish_reason=None,
                     before_headers=before_headers)

    @staticmethod
    def refuse() -> Reply:
        """Close the connection without answering at all (the client sees a connection error)."""
        return Reply("refuse", finish_reason=None)

    @staticmethod
    def stream_error(after_chunks: int = 1, message: str = "scripted stream error") -> Reply:
        """Stream some chunks, then a `data: {"error": …}` event, as OpenAI does on mid-stream failures."""
        return Reply("stream_error", tuple(f"part{i} " for i in range(after_chunks)), message=message,
                     error_type="server_error", finish_reason=None)

    @staticmethod
    def raw_data(*events: bytes | str, after_chunks: int = 1, finish_reason: str | None = "stop") -> Reply:
        """Stream `after_chunks` content chunks, then each event as `data: <event>` exactly as
        given (malformed JSON, unescaped characters), then the usual end (finish, usage, [DONE]).
        A bytes event is sent whole, line endings included."""
        raw = tuple(e if isinstance(e, bytes) else b"data: " + e.encode() + b"\n\n" for e in events)
        return Reply("raw_data", tuple(f"part{i} " for i in range(after_chunks)), finish_reason=finish_reason,
                     raw=raw)

    @staticmethod
    def keep_alive(*, every: float = 2.0, after_chunks: int = 0) -> Reply:
        """Send `after_chunks` content chunks, then only `: keep-alive` SSE comments, `every`
        seconds, until the client leaves: bytes keep coming, tokens never do."""
        return Reply("keep_alive", tuple(f"part{i} " for i in range(after_chunks)), finish_reason=None,
                     keep_alive_every=every)


# Words the fake embeddings model takes as the same meaning, so dense search can find what
# lexical search can't.
SYNONYMS = {"automobile": "car", "vehicle": "car", "motorcar": "car", "feline": "cat", "kitty": "cat"}
EMBEDDING_DIMS = 64


def embed_text(text: str) -> list[float]:
    """A bag-of-words vector: each word (after SYNONYMS) adds 1 at a position fixed by its hash."""
    vector = [0.0] * EMBEDDING_DIMS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        canonical = SYNONYMS.get(word, word)
        vector[int(hashlib.sha256(canonical.encode()).hexdigest(), 16) % EMBEDDING_DIMS] += 1.0
    return vector


def split_words(text: str) -> list[str]:
    """"a b c" → ["a ", "b ", "c"]: token-ish chunks that join back to the text."""
    if not text:
        return []
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if words[-1] else [w + " " for w in words[:-1]]


def message_text(content: Any) -> str:
    """A message's content as text: a string, or the text of `{type: "text", text}` parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def last_message_text(body: Obj) -> str:
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    return message_text(last.get("content"))


# ---------------------------------------------------------------- the log


@dataclass
class RequestRecord:
    """One chat completion request; `*_at` are time.monotonic(), `*_wall` time.time()."""

    index: int
    body: Obj
    headers: dict[str, str]
    marker: str  # the last message's content: what rules match against
    started_at: float
    started_wall: float
    ended_at: float | None = None
    ended_wall: float | None = None
    outcome: str | None = None  # completed | client_closed | dropped | error (None: still open)
    chunks_sent: int = 0
    reply_kind: str = ""
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def end(self, outcome: str) -> None:
        """Record the first way the request ended (later ones are consequences of it)."""
        if self.outcome is None:
            self.ended_at = time.monotonic()
            self.ended_wall = time.time()
            self.outcome = outcome
            self.done.set()

    def summary(self) -> Obj:
        return {
            "index": self.index, "marker": self.marker, "outcome": self.outcome,
            "reply": self.reply_kind, "stream": bool(self.body.get("stream")),
            "model": self.body.get("model"), "chunks_sent": self.chunks_sent,
            "started_at": self.started_at, "started_wall": self.started_wall,
            "ended_at": self.ended_at, "ended_wall": self.ended_wall,
        }


# ---------------------------------------------------------------- the server


class FakeUpstream:
    """The server, its script (rules, then a queue, then `default`) and its request log.

    The server runs on its own event loop in a background thread; the script and the log may be
    used from any thread.
    """

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply.text("ok")
        self._lock = threading.Lock()
        self._rules: list[tuple[str, list[Reply]]] = []
        self._queue: list[Reply] = []
        self._requests: list[RequestRecord] = []
        self._total = 0  # requests ever received (indexes keep growing across reset())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0
        self.embedding_batches: list[int] = []  # texts per /v1/embeddings request, in order
        self.fail_embeddings = False
        self.embeddings_delay = 0.0  # seconds before each /v1/embeddings answer
        # what GET /v1/models lists (`assistd check` asks it too); None: no such route (404)
        self.models: list[Obj] | None = list(DEFAULT_MODELS)
        self.models_requests = 0

    # ------------------------------------------------------------ script

    def on(self, trigger: str, reply: Reply | list[Reply]) -> None:
        """Answer requests whose last message contains `trigger`.

        With a list, successive matching requests take successive replies and the last one
        repeats. Rules are tried in the order they were added.
        """
        replies = list(reply) if isinstance(reply, list) else [reply]
        if not replies:
            raise ValueError("on() needs at least one reply")
        with self._lock:
            self._rules.append((trigger, replies))

    def enqueue(self, *replies: Reply) -> None:
        """Replies for requests no rule matches, first in first out."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Forget rules, queue and log (the default reply stays)."""
        with self._lock:
            self._rules.clear()
            self._queue.clear()
            self._requests.clear()
            self.embedding_batches.clear()
            self.fail_embeddings = False
            self.embeddings_delay = 0.0
            self.models = list(DEFAULT_MODELS)
            self.models_requests = 0

    def _pick(self, marker: str) -> Reply:
        with self._lock:
            for trigger, replies in self._rules:
                if trigger in marker:
                    return replies.pop(0) if len(replies) > 1 else replies[0]
            return self._queue.pop(0) if self._queue else self.default

    # ------------------------------------------------------------ embeddings

    def _embeddings(self, body: bytes) -> tuple[int, Obj]:
        """`/v1/embeddings`: word-hash vectors in which synonyms share a word (see `embed_text`)."""
        try:
            parsed = json.loads(body)
            texts = parsed["input"]
        except (ValueError, KeyError, TypeError):
            return 400, _error_body(400, "We could not parse the JSON body.")
        texts = [texts] if isinstance(texts, str) else list(texts)
        with self._lock:
            self.embedding_batches.append(len(texts))
            failing = self.fail_embeddings
        if failing:
            return 500, _error_body(500, "scripted embeddings failure")
        data = [{"object": "embedding", "index": i, "embedding": embed_text(t)} for i, t in enumerate(texts)]
        return 200, {"object": "list", "data": data, "model": parsed.get("model", ""),
                     "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    # ------------------------------------------------------------ models

    def _models(self) -> tuple[int, Obj]:
        with self._lock:
            self.models_requests += 1
            models = self.models
        if models is None:
            return 404, _error_body(404, "no route GET /v1/models")
        return 200, {"object": "list", "data": models}

    # ------------------------------------------------------------ the log

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the log since the last reset(), oldest first."""
        with self._lock:
            return list(self._requests)

    def _log(self, body: Obj, headers: dict[str, str]) -> RequestRecord:
        with self._lock:
            record = RequestRecord(self._total, body, headers, last_message_text(body),
                                   time.monotonic(), time.time())
            self._total += 1
            self._requests.append(record)
            return record

    def requests_matching(self, trigger: str) -> list[RequestRecord]:
        return [r for r in self.requests if trigger in r.marker]

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RequestRecord]:
        """Wait until at least `n` requests have arrived; return the log."""
        deadline = time.monotonic() + timeout
        while len(log := self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} upstream requests within {timeout}s, got {len(log)}")
            time.sleep(0.002)
        return log

    def wait_for_outcome(self, index: int | str, outcome: str, timeout: float = 10.0) -> RequestRecord:
        """Wait for request `index` (or the first whose last message contains the string) to end.

        Raises AssertionError if it ends otherwise than `outcome`, or not within `timeout`.
        """
        deadline = time.monotonic() + timeout
        record = self._await_record(index, deadline)
        if not record.done.wait(max(0.0, deadline - time.monotonic())):
            raise AssertionError(f"upstream request {index!r} still open after {timeout}s "
                                 f"({record.chunks_sent} chunks sent)")
        assert record.outcome == outcome, f"upstream request {index!r} ended {record.outcome!r}, expected {outcome!r}"
        return record

    def _await_record(self, index: int | str, deadline: float) -> RequestRecord:
        while True:
            log = self.requests
            if isinstance(index, int) and len(log) > index:
                return log[index]
            if isinstance(index, str):
                found = [r for r in log if index in r.marker]
                if found:
                    return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no upstream request {index!r} arrived ({len(log)} requests)")
            time.sleep(0.002)

    def stats(self) -> Obj:
        log = self.requests
        counts = {outcome: 0 for outcome in ("open", *OUTCOMES)}
        for record in log:
            counts[record.outcome or "open"] += 1
        return {"requests": len(log), **counts}

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Self:
        """Serve on an ephemeral port from a background thread."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(self.serve(0))
            except BaseException as exc:  # noqa: BLE001 — handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._loop = self._thread = self._server = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def serve(self, port: int, host: str = "127.0.0.1") -> asyncio.Server:
        """Listen on the running loop (the CLI uses this directly)."""
        # A deep backlog: benchmarks open 1000+ streams at once.
        server = await asyncio.start_server(self._handle, host, port, backlog=4096, limit=2**22)
        self.port = server.sockets[0].getsockname()[1]
        return server

    # ------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = await _read_request(reader)
            await self._route(*request, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # a client that went away, or was not speaking HTTP/1.1
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _route(self, method: str, target: str, headers: dict[str, str], body: bytes,  # noqa: PLR0911 - a router
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(target)
        path = url.path.rstrip("/")
        if method == "GET" and path == "/stats":
            return await _send_json(writer, 200, self.stats())
        if method == "GET" and path == "/log":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            return await _send_json(writer, 200, [r.summary() for r in self.requests[since:]])
        if method == "POST" and path in ("/v1/embeddings", "/embeddings"):
            await asyncio.sleep(self.embeddings_delay)
            return await _send_json(writer, *self._embeddings(body))
        if method == "GET" and path in ("/v1/models", "/models"):
            return await _send_json(writer, *self._models())
        if path not in ("/v1/chat/completions", "/chat/completions"):
            return await _send_json(writer, 404, _error_body(404, f"no route {method} {path}"))
        if method != "POST":
            return await _send_json(writer, 405, _error_body(405, f"{method} not allowed"))
        try:
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError):
            return await _send_json(writer, 400, _error_body(400, "We could not parse the JSON body."))
        record = self._log(parsed, headers)
        reply = self._pick(record.marker)
        record.reply_kind = reply.kind
        await _respond(record, reply, reader, writer)


# ---------------------------------------------------------------- answering


async def _respond(record: RequestRecord, reply: Reply, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
    """Send the reply while watching the socket: EOF from the client ends it as client_closed."""
    gone = asyncio.ensure_future(_until_eof(reader))
    send = asyncio.ensure_future(_send_reply(record, reply, writer))
    try:
        await asyncio.wait({gone, send}, return_when=asyncio.FIRST_COMPLETED)
        if not send.done():
            record.end("client_closed")
        else:
            try:
                send.result()
            except ConnectionError:
                record.end("client_closed")  # a write hit the closed socket before EOF was read
            except Exception:
                record.end("error")  # a bug here: end the record rather than leave waiters hanging
                raise
    finally:
        gone.cancel()
        send.cancel()
        await asyncio.gather(gone, send, return_exceptions=True)


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Return when the client closes its end (it sends nothing more after its one request)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def _send_reply(record: RequestRecord, reply: Reply, writer: asyncio.StreamWriter) -> None:
    if reply.kind == "hang" and reply.before_headers:
        await asyncio.Future()  # until the client leaves
    if reply.kind == "refuse":
        record.end("dropped")
        writer.close()
        return
    if reply.kind == "error":
        await _send_json(writer, reply.status, _error_body(reply.status, reply.message, reply.error_type,
                                                           reply.error_code), reply.headers)
        record.end("error")
        return
    if not record.body.get("stream"):
        return await _send_completion(record, reply, writer)
    await _send_stream(record, reply, writer)


async def _send_completion(record: RequestRecord, reply: Reply, writer: asyncio.StreamWriter) -> None:
    if reply.kind == "drop":
        record.end("dropped")
        writer.close()  # no response at all
        return
    if reply.kind in ("hang", "stream_error", "keep_alive"):
        await asyncio.sleep(reply.chunk_delay * len(reply.chunks))
        if reply.kind in ("hang", "keep_alive"):
            await asyncio.Future()
        await _send_json(writer, 500, _error_body(500, reply.message))
        record.end("error")
        return
    await asyncio.sleep(reply.chunk_delay * len(reply.chunks))
    await _send_json(writer, 200, _completion(record.body, reply))
    record.end("completed")


async def _send_stream(record: RequestRecord, reply: Reply, writer: asyncio.StreamWriter) -> None:
    # Chunked transfer encoding, so that a connection closed before the final empty chunk is a
    # broken body to the client (a plain EOF-delimited body would just look finished).
    writer.write(_head(200, "text/event-stream; charset=utf-8", chunked=True))
    frames = _Frames(record.body)
    for delta, opening in _deltas(reply):
        if reply.chunk_delay and record.chunks_sent:
            await asyncio.sleep(reply.chunk_delay)
        if writer.transport.is_closing():
            raise ConnectionResetError("the client went away")  # before EOF was read
        writer.write(_chunked(frames.delta(delta)))
        await writer.drain()
        record.chunks_sent += not opening
    if reply.kind == "drop":
        record.end("dropped")
        writer.close()  # flushes what was written, then FIN without the last chunk nor [DONE]
        return
    if reply.kind == "hang":
        await asyncio.Future()  # until the client leaves
    if reply.kind == "keep_alive":
        await _keep_alive(record, reply, writer)
    writer.write(b"".join(map(_chunked, reply.raw)))  # raw_data's events
    if reply.kind == "stream_error":
        writer.write(_chunked(b"data: " + json.dumps(_error_body(500, reply.message)).encode() + b"\n\n"))
        writer.write(_chunked(b""))
        await writer.drain()
        record.end("error")
        return
    if reply.finish_reason is not None:
        writer.write(_chunked(frames.delta({}, reply.finish_reason)))
    if frames.include_usage:
        writer.write(_chunked(frames.usage(_usage(record.body, reply))))
    writer.write(_chunked(b"data: [DONE]\n\n") + _chunked(b""))
    await writer.drain()
    record.end("completed")


async def _keep_alive(record: RequestRecord, reply: Reply, writer: asyncio.StreamWriter) -> None:
    """SSE comments only, until the client leaves (a write then fails, or EOF ends the reply)."""
    while True:
        await asyncio.sleep(reply.keep_alive_every)
        if writer.transport.is_closing():
            raise ConnectionResetError("the client went away")
        writer.write(_chunked(b": keep-alive\n\n"))
        await writer.drain()


def _deltas(reply: Reply) -> list[tuple[Obj, bool]]:
    """The choice deltas of a streamed reply, each flagged if it is the bare opening one.

    As OpenAI does: a text stream opens with `{role, content: ""}` alone; a tool-call-only
    stream carries the role on its first call's delta (id, type, name, empty arguments), and
    the arguments follow in pieces.
    """
    opening: Obj = {"role": "assistant", "content": "", "refusal": None}
    out: list[tuple[Obj, bool]] = [(opening, True)] if reply.chunks or not reply.calls else []
    out += [({"content": c}, False) for c in reply.chunks]
    for index, call_id, name, pieces in _tool_pieces(reply.calls):
        first: Obj = {"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                      "function": {"name": name, "arguments": ""}}]}
        if not out:
            first = {"role": "assistant", "content": None, "refusal": None, **first}
        out.append((first, False))
        out += [({"tool_calls": [{"index": index, "function": {"arguments": p}}]}, False) for p in pieces]
    return out


def _tool_pieces(calls: tuple[tuple[str, str], ...]) -> list[tuple[int, str, str, list[str]]]:
    """Per call: index, a fresh id, name, and its arguments cut in two pieces."""
    out = []
    for index, (name, arguments) in enumerate(calls):
        half = len(arguments) // 2
        pieces = [p for p in (arguments[:half], arguments[half:]) if p]
        out.append((index, "call_" + secrets.token_hex(12), name, pieces))
    return out


class _Frames:
    """Encodes the chunks of one stream; the envelope is fixed, only the choice varies."""

    def __init__(self, body: Obj) -> None:
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        envelope = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": body.get("model") or "fake-model",
                    "system_fingerprint": "fp_fake"}
        self._prefix = b"data: " + json.dumps(envelope).encode()[:-1]  # without the closing brace
        # With include_usage, OpenAI sends `usage: null` on every chunk but the last.
        self._suffix = b', "usage": null}\n\n' if self.include_usage else b"}\n\n"

    def delta(self, delta: Obj, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._prefix + b', "choices": [' + json.dumps(choice).encode() + b"]" + self._suffix

    def usage(self, usage: Obj) -> bytes:
        return self._prefix + b', "choices": [], "usage": ' + json.dumps(usage).encode() + b"}\n\n"


def _usage(body: Obj, reply: Reply) -> Obj:
    """Deterministic counts: prompt = characters of all contents // 4 + 1; completion = pieces sent."""
    chars = sum(len(message_text(m.get("content"))) for m in body.get("messages") or [] if isinstance(m, dict))
    completion = len(reply.chunks) + sum(1 + len(p) for *_, p in _tool_pieces(reply.calls))
    usage = {"prompt_tokens": chars // 4 + 1, "completion_tokens": completion}
    usage.update(reply.usage or {})
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _completion(body: Obj, reply: Reply) -> Obj:
    message: Obj = {"role": "assistant", "content": "".join(reply.chunks) or None, "refusal": None}
    if reply.calls:
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                                 for (_, call_id, name, _), (_, args) in zip(_tool_pieces(reply.calls), reply.calls, strict=True)]
    return {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or "fake-model", "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": _usage(body, reply)}


def _error_body(status: int, message: str, type: str | None = None, code: str | None = None) -> Obj:
    """OpenAI's error envelope, with the type/code OpenAI uses for that status by default."""
    default_type, default_code = {
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": type or default_type, "param": None,
                      "code": code if code is not None else default_code}}


# ---------------------------------------------------------------- HTTP/1.1, minimal


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return method, target, headers, await _read_chunked(reader)
    length = int(headers.get("content-length", "0"))
    return method, target, headers, await reader.readexactly(length) if length else b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # the empty trailer section
    return bytes(body)


def _head(status: int, content_type: str, length: int = 0, *, chunked: bool = False,
          extra: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", f"Content-Type: {content_type}",
             "Cache-Control: no-cache", "Connection: close", "x-request-id: req_" + secrets.token_hex(8),
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data makes the terminating chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any,
                     headers: Iterable[tuple[str, str]] = ()) -> None:
    data = json.dumps(payload).encode()
    writer.write(_head(status, "application/json", len(data), extra=headers) + data)
    await writer.drain()


# ---------------------------------------------------------------- standalone


def serve_until_stopped(make: Callable[[], FakeUpstream], host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve the upstream `make()` builds, in this process until it is interrupted, after
    printing `READY <base url>` (what bench.common.upstream_process waits for)."""

    async def serve() -> None:
        upstream = make()
        server = await upstream.serve(port, host)
        print(f"READY http://{host}:{upstream.port}/v1", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI Chat Completions upstream for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    parser.add_argument("--tokens", type=int, default=50, help="content chunks per streamed reply")
    parser.add_argument("--chunk-delay", type=float, default=0.02, help="seconds between chunks")
    args = parser.parse_args(argv)
    reply = Reply.text(" ".join(f"tok{i}" for i in range(args.tokens)), chunk_delay=args.chunk_delay)
    serve_until_stopped(lambda: FakeUpstream(reply), args.host, args.port)


if __name__ == "__main__":
    main()
