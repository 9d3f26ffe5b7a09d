"""The SSE relay's quiet-stream fallback must never drop events that arrive while it looks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from assistd.execution import fallback
from assistd.execution.broker import LocalBroker
from assistd.http import sse


class SlowStore:
    """A store whose read of the run takes a while, during which the run finishes."""

    def __init__(self, broker: LocalBroker, run_id: str) -> None:
        self.broker = broker
        self.run_id = run_id
        self.runs = self  # the run queries, as Store.runs

    async def get_run_by_id(self, run_id: str) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        self.broker.publish(run_id, "thread.message.delta", {"id": "msg_1", "delta": {"content": [
            {"index": 0, "type": "text", "text": {"value": "late", "annotations": []}}]}})
        self.broker.publish(run_id, "thread.run.completed", {"id": run_id, "status": "completed"})
        return {"id": run_id, "status": "completed"}

    async def run_messages(self, run_id: str) -> list[dict[str, Any]]:
        return []

    async def run_steps(self, run_id: str) -> list[dict[str, Any]]:
        return []


async def _relay() -> list[str]:
    broker = LocalBroker()
    sub = await broker.subscribe("run_1")
    rt: Any = SimpleNamespace(store=SlowStore(broker, "run_1"), settings=SimpleNamespace(sse_keepalive_seconds=15.0))
    frames = [frame async for frame in sse._run_events(rt, sub, [], None)]
    return [f.decode().split("\n", 1)[0] for f in frames]


def test_events_published_while_a_quiet_stream_rereads_the_run_are_still_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fallback, "QUIET_SECONDS", 0.01)
    assert asyncio.run(_relay()) == ["event: thread.message.delta", "event: thread.run.completed", "event: done"]
