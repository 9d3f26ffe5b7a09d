"""Time to first delta: through assistd minus directly to the same fake upstream.

Samples alternate between the two paths so that both see the same machine load.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import DISTRIBUTION_HEADER, assistd, async_client, distribution_row, fake_upstream, ms, percentile

SAMPLES = 200


async def _direct(client: Any) -> float:
    start = time.perf_counter()
    stream = await client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": "direct"}], stream=True
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
                break
    return first


async def _through_assistd(client: Any, assistant_id: str) -> float:
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "via assistd"}])
    start = time.perf_counter()
    async with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant_id) as stream:
        async for event in stream:
            if event.event == "thread.message.delta":
                first = time.perf_counter() - start
                break
        await stream.until_done()
    return first


async def _measure(base_url: str, upstream_url: str) -> dict[str, list[float]]:
    direct, via = async_client(upstream_url), async_client(base_url)
    asst = await via.beta.assistants.create(model="bench")
    for _ in range(10):  # warm both paths up
        await _direct(direct)
        await _through_assistd(via, asst.id)
    out: dict[str, list[float]] = {"direct": [], "assistd": []}
    for _ in range(SAMPLES):
        out["direct"].append(await _direct(direct))
        out["assistd"].append(await _through_assistd(via, asst.id))
    await direct.close()
    await via.close()
    return out


def run() -> str:
    with fake_upstream(tokens=5, chunk_delay=0.0) as upstream_url, assistd(upstream_url) as (base_url, _):
        result = asyncio.run(_measure(base_url, upstream_url))
    direct, via = result["direct"], result["assistd"]
    overhead = percentile(via, 0.5) - percentile(direct, 0.5)
    return "\n".join([
        f"### Time to first delta ({SAMPLES} samples each, interleaved)", "", DISTRIBUTION_HEADER,
        distribution_row("direct to the fake upstream", direct, "—"),
        distribution_row("through assistd (create run → first `thread.message.delta`)", via, "—"),
        "",
        f"**assistd minus direct at p50: {ms(overhead)}** (target ≤ 5 ms). The assistd path includes "
        "creating the run (a database write), the worker claiming it (a second write) and opening "
        "the assistant message and its step (a third) before the first token is forwarded.",
    ])


if __name__ == "__main__":
    print(run())
