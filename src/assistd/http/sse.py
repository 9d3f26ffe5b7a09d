"""Server-Sent Events for a run: `event:`/`data:` frames, ending with `done` / `[DONE]`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.responses import StreamingResponse

from assistd.domain.run_state import STREAM_STOPS
from assistd.execution.broker import Event, Subscription
from assistd.execution.runtime import Runtime

STOP_EVENTS = frozenset(f"thread.run.{status.value}" for status in STREAM_STOPS)
# A quiet stream re-reads the run now and then, in case it ended somewhere we can't hear.
QUIET_SECONDS = 5.0


def frame(event: str, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


DONE = frame("done", "[DONE]")


async def _events(rt: Runtime, sub: Subscription, first: Iterable[Event]) -> AsyncIterator[bytes]:
    try:
        for event in first:
            yield frame(event.event, event.data)
            if event.event in STOP_EVENTS:
                yield DONE
                return
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), QUIET_SECONDS)
            except asyncio.TimeoutError:
                run = await rt.store.get_run_by_id(sub.run_id)
                if run is None or run["status"] in STREAM_STOPS:
                    if run is not None:
                        yield frame(f"thread.run.{run['status']}", run)
                    yield DONE
                    return
                continue
            yield frame(event.event, event.data)
            if event.event in STOP_EVENTS:
                yield DONE
                return
    finally:
        sub.close()


def stream_response(rt: Runtime, sub: Subscription, first: Iterable[Event]) -> StreamingResponse:
    """Stream a run's events to the client; a client that goes away leaves the run running."""
    return StreamingResponse(
        _events(rt, sub, list(first)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
