"""CPU per streamed upstream chunk, in the process that reads it: the cost every generating run
puts on a worker's event loop, chunk after chunk.

100 streams at once from the fake upstream (its own process), each 60 chunks 50 ms apart, so
every chunk arrives by itself, as a model's tokens do. Four ways of reading them, in turn, in
the same run (the median of ROUNDS rounds each):
- baseline: the SDK's own stream (`chat.completions.create(stream=True)`, pydantic chunks, the
  SDK's default httpx transport), as assistd read upstreams until the upstream-json change;
- assistd's reader (`Upstream.stream`: SSE split and `json.loads`) on the SDK's default transport;
- assistd's reader on the aiohttp transport (what `Upstream` uses);
- the floor: the same bytes read from a bare asyncio socket, no HTTP parsing at all.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
from openai import _constants

from bench.common import PYTHON, Upstream, main, report, run_bounded, upstream_process

STREAMS, CHUNKS, DELAY = 100, 60, 0.05
ROUNDS = 3
TIME_LIMIT = 300.0
REQUEST: dict[str, Any] = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}

Reader = Callable[[], Awaitable[int]]


def _sdk(base_url: str) -> openai.AsyncOpenAI:
    timeout = type(_constants.DEFAULT_TIMEOUT)(60, connect=10)
    limits = type(_constants.DEFAULT_CONNECTION_LIMITS)(max_connections=None, max_keepalive_connections=200)
    return openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=timeout,
                              http_client=openai.DefaultAsyncHttpxClient(timeout=timeout, limits=limits))


async def _measure(read: Reader) -> float:
    """CPU seconds per chunk of STREAMS streams read at once (after one untimed warm-up)."""
    await read()
    before = time.process_time()
    counts = await asyncio.gather(*(read() for _ in range(STREAMS)))
    return (time.process_time() - before) / max(1, sum(counts))


async def _count(stream: AsyncIterator[Any]) -> int:
    """How many chunks a stream gives (the way of reading is what is measured, not this)."""
    chunks = 0
    async for _ in stream:
        chunks += 1
    return chunks


async def _sdk_stream(base_url: str) -> float:
    client = _sdk(base_url)

    async def read() -> int:
        async with await client.chat.completions.create(**REQUEST, stream=True) as stream:
            return await _count(stream)

    try:
        return await _measure(read)
    finally:
        await client.close()


async def _assistd(base_url: str, transport: str) -> float:
    from assistd.config import load_settings
    from assistd.execution.upstream import Upstream as Reader

    upstream = Reader(load_settings({"ASSISTD_UPSTREAM_BASE_URL": base_url, "ASSISTD_UPSTREAM_API_KEY": "bench"}))
    if transport == "httpx":
        await upstream.client.close()
        upstream.client = _sdk(base_url)

    async def read() -> int:
        async with upstream.stream(REQUEST) as stream:
            return await _count(stream)

    try:
        return await _measure(read)
    finally:
        await upstream.close()


async def _socket(base_url: str) -> float:
    host, port = base_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    body = b'{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()

    async def read() -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + body)
        while await reader.read(65536):
            pass
        writer.close()
        return CHUNKS + 2  # the chunks, the finish chunk and [DONE], as the others count them

    return await _measure(read)


WAYS: dict[str, Callable[[str], Awaitable[float]]] = {
    "SDK stream, httpx transport (baseline)": _sdk_stream,
    "assistd reader, httpx transport": lambda url: _assistd(url, "httpx"),
    "assistd reader, aiohttp transport (assistd now)": lambda url: _assistd(url, "aiohttp"),
    "bare socket reads (floor)": _socket,
}


async def measure(upstream: Upstream) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in WAYS}
    for _ in range(ROUNDS):
        for name, way in WAYS.items():
            samples[name].append(await way(upstream.base_url))
    return {name: statistics.median(values) for name, values in samples.items()}


def run() -> str:
    text = " ".join(f"tok{i}" for i in range(CHUNKS))
    code = ("from tests.support.fake_upstream import FakeUpstream, Reply, serve_until_stopped; "
            f"serve_until_stopped(lambda: FakeUpstream(Reply.text({text!r}, chunk_delay={DELAY})))")
    with upstream_process([PYTHON, "-c", code]) as upstream:
        cpu = run_bounded(measure(upstream), TIME_LIMIT)
    baseline = cpu["SDK stream, httpx transport (baseline)"]
    lines = [f"{name}: {us * 1e6:.1f} µs/chunk ({us / baseline:.2f}× baseline)" for name, us in cpu.items()]
    rows = [f"| {name} | {us * 1e6:.1f} µs | {us / baseline:.2f}× |" for name, us in cpu.items()]
    markdown = [
        "### CPU per upstream chunk",
        "",
        f"{STREAMS} streams at once, {CHUNKS} chunks each {DELAY * 1000:.0f} ms apart (each chunk its own read); "
        f"CPU of the reading process per chunk, median of {ROUNDS} rounds, ways interleaved.",
        "",
        "| way of reading | CPU per chunk | vs baseline |",
        "| --- | --- | --- |",
        *rows,
    ]
    return report("CPU per upstream chunk", lines, markdown)


if __name__ == "__main__":
    main(run)
