"""Cancel latency with 100 concurrent streaming runs.

For each run, while all the others keep streaming: t0 just before the cancel request;
A = when the fake upstream saw its connection closed, B = when the client's stream got
`thread.run.cancelled`. Both are wall-clock differences on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

from bench.common import DISTRIBUTION_HEADER, assistd, async_client, distribution_row, fake_upstream

RUNS = 100


async def _watch(client: Any, thread_id: str, assistant_id: str, state: dict[str, Any]) -> None:
    async with client.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id) as stream:
        async for event in stream:
            if event.event == "thread.run.created":
                state["run_id"] = event.data.id
            elif event.event == "thread.message.delta":
                state["streaming"].set()
            elif event.event == "thread.run.cancelled":
                state["cancelled_wall"] = time.time()


async def _measure(base_url: str, upstream_url: str) -> dict[str, list[float]]:
    client = async_client(base_url)
    asst = await client.beta.assistants.create(model="bench")
    states: list[dict[str, Any]] = []
    for i in range(RUNS):
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": f"marker-{i}"}])
        states.append({"marker": f"marker-{i}", "thread_id": thread.id, "streaming": asyncio.Event()})
    tasks = [asyncio.create_task(_watch(client, s["thread_id"], asst.id, s)) for s in states]
    await asyncio.wait_for(asyncio.gather(*(s["streaming"].wait() for s in states)), 120)
    for state in states:
        state["t0"] = time.time()
        run = await client.beta.threads.runs.cancel(state["run_id"], thread_id=state["thread_id"])
        state["answer"] = run.status
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    log = {r["marker"]: r for r in httpx.get(upstream_url.removesuffix("/v1") + "/log").json()}
    closed, cancelled = [], []
    for state in states:
        record = log[state["marker"]]
        assert record["outcome"] == "client_closed", record
        closed.append(record["ended_wall"] - state["t0"])
        cancelled.append(state["cancelled_wall"] - state["t0"])
    final = await client.beta.threads.runs.retrieve(states[0]["run_id"], thread_id=states[0]["thread_id"])
    message = (await client.beta.threads.messages.list(states[0]["thread_id"])).data[0]
    assert final.status == "cancelled" and message.status == "incomplete" and message.content[0].text.value  # type: ignore[union-attr]
    await client.close()
    return {"closed": closed, "cancelled": cancelled}


def run(database_url: str = "") -> str:
    env = {"ASSISTD_DATABASE_URL": database_url} if database_url else {}
    with fake_upstream(tokens=100_000, chunk_delay=0.05) as upstream_url, assistd(upstream_url, env) as (base_url, _):
        result = asyncio.run(_measure(base_url, upstream_url))
    backend = "PostgreSQL" if database_url else "SQLite"
    lines = [
        f"### Cancel latency, {RUNS} concurrent streaming runs ({backend})", "", DISTRIBUTION_HEADER,
        distribution_row("cancel → upstream connection closed", result["closed"], "p99 ≤ 100 ms"),
        distribution_row("cancel → `thread.run.cancelled` at the client", result["cancelled"], "p99 ≤ 100 ms"),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="", help="postgresql://… (default: SQLite)")
    print(run(parser.parse_args().database_url))
