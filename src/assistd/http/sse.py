"""Server-Sent Events for a run: `event:`/`data:` frames, ending with `done` / `[DONE]`."""

from __future__ import annotations

import logging
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.responses import StreamingResponse

from assistd.domain.run_state import STREAM_STOPS
from assistd.execution.broker import Event, Subscription, serialize
from assistd.execution.runtime import Runtime

log = logging.getLogger("assistd.sse")
STOP_EVENTS = frozenset(f"thread.run.{status.value}" for status in STREAM_STOPS)
# A quiet stream re-reads the run now and then, in case it ended somewhere we can't hear.
QUIET_SECONDS = 5.0


def frame(event: str, data: Any, event_id: str = "") -> bytes:
    """One SSE frame; `id:` (the event's place in the run's log) lets a client resume."""
    payload = data if isinstance(data, str) else serialize(data)
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {payload}\n\n".encode()


DONE = frame("done", "[DONE]")
# Sent when the stream has been quiet for ASSISTD_SSE_KEEPALIVE_SECONDS, so that proxies and
# clients with read timeouts keep the connection; SSE clients ignore comment lines.
KEEPALIVE = b": keep-alive\n\n"


class _Quiet:
    """Nothing happened within the wait."""


QUIET = _Quiet()


Shape = Callable[[Any], Any]  # rewrites an event's object before it is sent (e.g. `include[]`)
STEP_EVENT = "thread.run.step."


def _shaped(event: Event, shape: Shape | None) -> Event:
    if shape is None or not event.event.startswith(STEP_EVENT):
        return event
    data = json.loads(event.data) if isinstance(event.data, str) else event.data
    return Event(event.event, shape(data), event.id)


async def _events(rt: Runtime, sub: Subscription, first: Iterable[Event], shape: Shape | None) -> AsyncIterator[bytes]:
    try:
        async for chunk in _run_events(rt, sub, first, shape):
            yield chunk
    except Exception:
        log.exception("stream of run %s broke", sub.run_id)
        yield frame("error", {"error": {"message": "The server had an error while streaming this run.",
                                        "type": "server_error", "param": None, "code": None}})
        yield DONE
    finally:
        await sub.close()


async def _next_event(rt: Runtime, sub: Subscription, wait: float) -> Event | _Quiet | None:
    """The run's next event within `wait` seconds, else QUIET; None once the run has stopped
    without one reaching us."""
    event = await sub.get(wait)
    if event is not None:
        return event
    run = await rt.store.get_run_by_id(sub.run_id)
    # The read may have waited (a busy pool): what the run published meanwhile comes first.
    event = await sub.get(0)
    if event is not None:
        return event
    if run is None:
        return None
    if run["status"] in STREAM_STOPS:
        return Event(f"thread.run.{run['status']}", run)
    return QUIET


async def _run_events(rt: Runtime, sub: Subscription, first: Iterable[Event],
                      shape: Shape | None) -> AsyncIterator[bytes]:
    pending = list(first)
    keepalive = rt.settings.sse_keepalive_seconds
    last_sent = time.monotonic()
    while True:
        quiet_for = time.monotonic() - last_sent
        event = pending.pop(0) if pending else await _next_event(
            rt, sub, max(0.0, min(QUIET_SECONDS, keepalive - quiet_for)))
        if event is None:
            break
        if isinstance(event, _Quiet):
            if time.monotonic() - last_sent >= keepalive:
                yield KEEPALIVE
                last_sent = time.monotonic()
            continue
        shaped = _shaped(event, shape)
        yield frame(shaped.event, shaped.data, shaped.id)
        last_sent = time.monotonic()
        if event.event in STOP_EVENTS:
            break
    yield DONE


def stream_response(rt: Runtime, sub: Subscription, first: Iterable[Event],
                    shape: Shape | None = None) -> StreamingResponse:
    """Stream a run's events to the client; a client that goes away leaves the run running.
    `shape`, if given, rewrites each run step event's object."""
    return StreamingResponse(
        _events(rt, sub, list(first), shape),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
