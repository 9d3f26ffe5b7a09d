"""A scripted fake Chat Completions upstream: a real HTTP server on 127.0.0.1.

It speaks the streaming wire format (`data: {chat.completion.chunk}` … `data: [DONE]`),
serves scripted replies (text at a chosen pace, tool calls, `finish_reason: length`, HTTP
errors, dropped connections) and logs every request with when and how it ended — in
particular when the client (assistd) closed the connection, which is what a cancel must do.

Run on its own for benchmarks: `python -m tests.support.fake_upstream --port 0 --tokens 50
--chunk-delay 0.02` prints `READY <base_url>` and answers every request with that reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Reply:
    kind: str  # text | tool_calls | error | drop
    chunks: tuple[str, ...] = ()
    calls: tuple[tuple[str, str], ...] = ()
    chunk_delay: float = 0.0
    finish_reason: str = "stop"
    status: int = 200
    message: str = ""
    usage: Obj | None = None

    @staticmethod
    def text(text: str, *, chunk_delay: float = 0.0, chunks: list[str] | None = None,
             finish_reason: str = "stop", usage: Obj | None = None) -> Reply:
        """Text split into word chunks (spaces kept), streamed `chunk_delay` apart."""
        parts = chunks if chunks is not None else _words(text)
        return Reply("text", tuple(parts), chunk_delay=chunk_delay, finish_reason=finish_reason, usage=usage)

    @staticmethod
    def tool_calls(calls: list[tuple[str, str]], *, usage: Obj | None = None, chunk_delay: float = 0.0) -> Reply:
        return Reply("tool_calls", calls=tuple(calls), finish_reason="tool_calls", usage=usage, chunk_delay=chunk_delay)

    @staticmethod
    def error(status: int, message: str = "scripted upstream error") -> Reply:
        return Reply("error", status=status, message=message)

    @staticmethod
    def drop(after_chunks: int = 1) -> Reply:
        return Reply("drop", chunks=tuple(f"part{i} " for i in range(after_chunks)))


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if words else []


@dataclass
class RequestRecord:
    body: Obj
    headers: dict[str, str]
    marker: str
    started_at: float
    started_wall: float
    ended_at: float | None = None
    ended_wall: float | None = None
    outcome: str | None = None  # completed | client_closed | dropped | error
    chunks_sent: int = 0

    def end(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.ended_at = time.monotonic()
            self.ended_wall = time.time()

    def summary(self) -> Obj:
        return {
            "marker": self.marker, "outcome": self.outcome, "chunks_sent": self.chunks_sent,
            "started_at": self.started_at, "started_wall": self.started_wall,
            "ended_at": self.ended_at, "ended_wall": self.ended_wall,
        }


def last_message_text(body: Obj) -> str:
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content") or ""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class ClientGone(Exception):
    pass


class FakeUpstream:
    """The server, its script (rules and a queue) and its request log. Thread-safe."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply.text("ok")
        self._lock = threading.Lock()
        self._rules: list[tuple[str, list[Reply]]] = []
        self._queue: list[Reply] = []
        self.requests: list[RequestRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------ script

    def on(self, trigger: str, reply: Reply | list[Reply]) -> None:
        """Answer requests whose last message contains `trigger` (a list: one after another)."""
        replies = reply if isinstance(reply, list) else [reply]
        with self._lock:
            self._rules.append((trigger, list(replies)))

    def enqueue(self, reply: Reply) -> None:
        with self._lock:
            self._queue.append(reply)

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self._queue.clear()
            self.requests.clear()

    def _pick(self, marker: str) -> Reply:
        with self._lock:
            for trigger, replies in self._rules:
                if trigger in marker:
                    return replies.pop(0) if len(replies) > 1 else replies[0]
            return self._queue.pop(0) if self._queue else self.default

    # ------------------------------------------------------------ waiting

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} upstream requests, got {len(self.requests)}")
            time.sleep(0.005)

    def wait_for_outcome(self, index: int, outcome: str, timeout: float = 10.0) -> RequestRecord:
        self.wait_for_requests(index + 1, timeout)
        record = self.requests[index]
        deadline = time.monotonic() + timeout
        while record.outcome is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert record.outcome == outcome, f"request {index} ended {record.outcome!r}, expected {outcome!r}"
        return record

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(self.serve(0))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def serve(self, port: int) -> asyncio.base_events.Server:
        server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=4096, limit=2**20)
        self.port = server.sockets[0].getsockname()[1]
        return server

    # ------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, headers, body = await _read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()
            return
        try:
            await self._route(method, path, headers, body, reader, writer)
        except (ConnectionError, ClientGone):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path.startswith("/stats"):
            return await _send_json(writer, 200, self.stats())
        if method == "GET" and path.startswith("/log"):
            since = int(path.partition("since=")[2] or 0)
            return await _send_json(writer, 200, [r.summary() for r in self.requests[since:]])
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return await _send_json(writer, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        try:
            parsed: Obj = json.loads(body)
        except json.JSONDecodeError:
            return await _send_json(writer, 400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
        record = RequestRecord(parsed, headers, last_message_text(parsed), time.monotonic(), time.time())
        self.requests.append(record)
        reply = self._pick(record.marker)
        await self._answer(record, reply, reader, writer)

    def stats(self) -> Obj:
        outcomes: dict[str, int] = {}
        for r in self.requests:
            outcomes[r.outcome or "open"] = outcomes.get(r.outcome or "open", 0) + 1
        return {"requests": len(self.requests), **outcomes}

    async def _answer(self, record: RequestRecord, reply: Reply, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if reply.kind == "error":
            record.end("error")
            error = {"error": {"message": reply.message, "type": "server_error" if reply.status >= 500 else "invalid_request_error",
                               "param": None, "code": None}}
            return await _send_json(writer, reply.status, error)
        if not record.body.get("stream"):
            record.end("completed")
            return await _send_json(writer, 200, _completion(record.body, reply))
        watcher = asyncio.ensure_future(reader.read(1))  # EOF here = the client went away
        try:
            await self._stream(record, reply, writer, watcher)
        except (ConnectionError, ClientGone):
            record.end("client_closed")
        finally:
            watcher.cancel()

    async def _stream(self, record: RequestRecord, reply: Reply, writer: asyncio.StreamWriter,
                      watcher: asyncio.Future[bytes]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"Connection: close\r\n\r\n")
        for chunk in _chunks(record.body, reply):
            if watcher.done():
                raise ClientGone()
            if reply.kind == "drop" and record.chunks_sent >= len(reply.chunks):
                record.end("dropped")
                writer.transport.abort()
                return
            writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await writer.drain()
            record.chunks_sent += 1
            if reply.chunk_delay:
                await asyncio.wait({watcher}, timeout=reply.chunk_delay)
        if watcher.done():
            raise ClientGone()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        record.end("completed")


# ---------------------------------------------------------------- wire format


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"Connection: close\r\n\r\n".encode() + data
    )
    await writer.drain()


def _usage(body: Obj, reply: Reply, completion: int) -> Obj:
    prompt = sum(len(str(m.get("content") or "")) for m in body.get("messages", [])) // 4 + 1
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage.update(reply.usage or {})
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _chunk(body: Obj, delta: Obj, finish: str | None = None) -> Obj:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", "fake"), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _tool_pieces(calls: tuple[tuple[str, str], ...]) -> list[Obj]:
    pieces: list[Obj] = []
    for index, (name, arguments) in enumerate(calls):
        half = len(arguments) // 2
        pieces.append({"tool_calls": [{"index": index, "id": f"call_fake{index}", "type": "function",
                                        "function": {"name": name, "arguments": ""}}]})
        for part in (arguments[:half], arguments[half:]):
            pieces.append({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    return pieces


def _chunks(body: Obj, reply: Reply) -> list[Obj]:
    deltas = _tool_pieces(reply.calls) if reply.kind == "tool_calls" else [{"content": c} for c in reply.chunks]
    if deltas:
        deltas[0] = {"role": "assistant", **deltas[0]}
    chunks = [_chunk(body, d) for d in deltas]
    if reply.kind == "drop":
        return chunks + [_chunk(body, {"content": "never sent"})]
    chunks.append(_chunk(body, {}, reply.finish_reason))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = _usage(body, reply, len(deltas))
        chunks.append({**_chunk(body, {}), "choices": [], "usage": usage})
    return chunks


def _completion(body: Obj, reply: Reply) -> Obj:
    message: Obj = {"role": "assistant", "content": "".join(reply.chunks) or None}
    if reply.kind == "tool_calls":
        message["tool_calls"] = [{"id": f"call_fake{i}", "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, (n, a) in enumerate(reply.calls)]
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            "usage": _usage(body, reply, len(reply.chunks))}


# ---------------------------------------------------------------- standalone


async def _main(port: int, tokens: int, delay: float) -> None:
    upstream = FakeUpstream(Reply.text(" ".join(f"tok{i}" for i in range(tokens)), chunk_delay=delay))
    server = await upstream.serve(port)
    print(f"READY {upstream.base_url}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.tokens, args.chunk_delay))


if __name__ == "__main__":
    main()
