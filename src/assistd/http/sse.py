"""Server-Sent Events for a run: `event:`/`data:` frames, ending with `done` / `[DONE]`."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.responses import StreamingResponse

from assistd.execution.broker import Event, Subscription, serialize
from assistd.execution.fallback import Delivered, Follower, Quiet
from assistd.execution.runtime import Runtime
from assistd.lifecycle.states import STREAM_STOPS

log = logging.getLogger("assistd.sse")
STOP_EVENTS = frozenset(f"thread.run.{status.value}" for status in STREAM_STOPS)


def frame(event: str, data: Any, event_id: str = "") -> bytes:
    """One SSE frame; `id:` (the event's place in the run's log) lets a client resume."""
    payload = data if isinstance(data, str) else serialize(data)
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {payload}\n\n".encode()


DONE = frame("done", "[DONE]")
# Sent when the stream has been quiet for ASSISTD_SSE_KEEPALIVE_SECONDS, so that proxies and
# clients with read timeouts keep the connection; SSE clients ignore comment lines.
KEEPALIVE = b": keep-alive\n\n"


Shape = Callable[[Any], Any]  # rewrites an event's object before it is sent (e.g. `include[]`)
STEP_EVENT = "thread.run.step."
SHAPED_CALL = '"file_search"'  # only these calls' step events are reshaped (file_search.without_content)


def _shaped(event: Event, shape: Shape | None) -> Event:
    """The event as the stream's `include[]` shows it. A step event is encoded once, when
    published: it is decoded again only when it holds a file_search call to reshape."""
    if shape is None or not event.event.startswith(STEP_EVENT):
        return event
    if isinstance(event.data, str) and SHAPED_CALL not in event.data:
        return event
    data = json.loads(event.data) if isinstance(event.data, str) else event.data
    return Event(event.event, shape(data), event.id)


async def _events(rt: Runtime, sub: Subscription, first: Iterable[Event], shape: Shape | None,
                  delivered: Delivered | None) -> AsyncIterator[bytes]:
    try:
        async for chunk in _run_events(rt, sub, first, shape, delivered):
            yield chunk
    except Exception:
        log.exception("stream of run %s broke", sub.run_id)
        yield frame("error", {"error": {"message": "The server had an error while streaming this run.",
                                        "type": "server_error", "param": None, "code": None}})
        yield DONE
    finally:
        await sub.close()


async def _run_events(rt: Runtime, sub: Subscription, first: Iterable[Event],
                      shape: Shape | None, delivered: Delivered | None = None) -> AsyncIterator[bytes]:
    """The run's events until it stops; from the database when the broker goes quiet and
    the database knows more (see execution/fallback.py)."""
    follower = Follower(rt.store, sub, delivered)
    pending = list(first)
    keepalive = rt.settings.sse_keepalive_seconds
    last_sent = time.monotonic()
    while True:
        quiet_for = time.monotonic() - last_sent
        event = (follower.sent(pending.pop(0)) if pending
                 else await follower.next(max(0.0, keepalive - quiet_for)))
        if event is None:
            break
        if isinstance(event, Quiet):
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
                    shape: Shape | None = None, delivered: Delivered | None = None) -> StreamingResponse:
    """Stream a run's events to the client; a client that goes away leaves the run running.
    `shape`, if given, rewrites each run step event's object. `delivered`: what the client
    already has of a run with a past (None: the run is new)."""
    return StreamingResponse(
        _events(rt, sub, list(first), shape, delivered),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
