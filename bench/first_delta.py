"""Time to first delta: directly to the fake upstream vs through assistd, same upstream.

Direct: `chat.completions.create(stream=True)` → first content chunk. Through assistd:
`runs.create(stream=True)` on a fresh thread (created beforehand, untimed) → first
`thread.message.delta`. Samples alternate between the two paths (and which goes first),
one at a time, so both see the same machine. The assistd path is also split into stages
by when the client received each event and when the upstream request arrived.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

import openai

from bench.common import (
    DISTRIBUTION_HEADER,
    Upstream,
    assistd,
    async_client,
    distribution_line,
    distribution_row,
    fake_upstream,
    main,
    ms,
    percentile,
    report,
    run_bounded,
)

SAMPLES = 200
WARMUP = 10
TOKENS = 5  # sent back to back: the first one is there at once
TIME_LIMIT = 180.0
TARGET = "≤ 2 ms"  # issue 11: assistd − direct at p50


@dataclass
class Via:
    """One sample through assistd: wall-clock marks from the request's start."""

    marker: str
    start: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # event → seconds after start


async def _direct(client: openai.AsyncOpenAI, marker: str) -> float:
    start = time.perf_counter()
    stream = await client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": marker}], stream=True
    )
    first = float("nan")
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
                break
    return first


async def _through_assistd(client: openai.AsyncOpenAI, assistant_id: str, marker: str) -> Via:
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": marker}])
    sample = Via(marker, start=time.time())
    stream = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant_id, stream=True)
    async with stream:
        async for event in stream:  # read to the end, so that runs never overlap
            sample.marks.setdefault(event.event, time.time() - sample.start)
    return sample


async def _pair(direct: openai.AsyncOpenAI, via: openai.AsyncOpenAI, assistant_id: str, tag: str,
                i: int) -> tuple[float, Via]:
    if i % 2:
        first = await _direct(direct, f"first-delta {tag} direct {i}")
        return first, await _through_assistd(via, assistant_id, f"first-delta {tag} assistd {i}")
    sample = await _through_assistd(via, assistant_id, f"first-delta {tag} assistd {i}")
    return await _direct(direct, f"first-delta {tag} direct {i}"), sample


@dataclass
class Result:
    direct: list[float]
    via: list[Via]
    upstream_start: dict[str, float]  # marker → wall clock the upstream got assistd's request


async def _measure(server_url: str, upstream: Upstream) -> Result:
    direct, via = async_client(upstream.base_url), async_client(server_url)
    tag = secrets.token_hex(3)
    try:
        assistant = await via.beta.assistants.create(model="bench")
        for i in range(WARMUP):
            await _pair(direct, via, assistant.id, f"{tag}-warmup", i)
        pairs = [await _pair(direct, via, assistant.id, tag, i) for i in range(SAMPLES)]
    finally:
        await direct.close()
        await via.close()
    log = await asyncio.to_thread(upstream.log)
    starts = {r["marker"]: r["started_wall"] for r in log}
    return Result([d for d, _ in pairs], [v for _, v in pairs], starts)


def run() -> str:
    with fake_upstream(TOKENS, 0.0) as upstream, assistd(upstream.base_url) as server:
        result = run_bounded(_measure(server.base_url, upstream), TIME_LIMIT)
    return _render(result)


def _stage(result: Result, event: str) -> list[float]:
    return [v.marks[event] for v in result.via if event in v.marks]


def _render(result: Result) -> str:
    via = _stage(result, "thread.message.delta")
    paired = [v.marks["thread.message.delta"] - d for d, v in zip(result.direct, result.via, strict=False)
              if "thread.message.delta" in v.marks]
    upstream = [result.upstream_start[v.marker] - v.start for v in result.via if v.marker in result.upstream_start]
    overhead = percentile(via, 0.5) - percentile(result.direct, 0.5)
    rows = [
        ("direct to the fake upstream → first content chunk", result.direct, "—"),
        ("through assistd: create run → first `thread.message.delta`", via, "—"),
        ("difference, sample by sample (assistd − direct, paired)", paired, f"p50 {TARGET}"),
    ]
    stages = [
        ("`thread.run.created` received (run inserted, stream opened)", _stage(result, "thread.run.created")),
        ("`thread.run.in_progress` received (worker claimed the run)", _stage(result, "thread.run.in_progress")),
        ("upstream request arrived at the fake upstream", upstream),
        ("`thread.message.created` received (message and step written)", _stage(result, "thread.message.created")),
        ("first `thread.message.delta` received", via),
    ]
    summary = f"assistd minus direct at p50: {ms(overhead)} (target {TARGET})"
    lines = [summary] + [distribution_line(n, v, t if t != "—" else "") for n, v, t in rows]
    lines += [distribution_line(f"stage: {n}", v) for n, v in stages]
    markdown = [
        f"### Time to first delta ({SAMPLES} samples each, interleaved, after {WARMUP} warm-up pairs)", "",
        DISTRIBUTION_HEADER, *[distribution_row(n, v, t) for n, v, t in rows], "",
        f"**{summary}** — p50 of the assistd path minus p50 of the direct path.", "",
        ("Where the assistd path's time goes (each from the start of the create-run request; "
        "client receive times, and the fake upstream's log for the upstream request):"), "",
        DISTRIBUTION_HEADER, *[distribution_row(n, v) for n, v in stages],
    ]
    return report("Time to first delta", lines, markdown)


if __name__ == "__main__":
    main(run)
