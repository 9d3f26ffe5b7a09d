"""Stream events of runs, from whoever changes a run to the SSE responses watching it.

Two implementations with one interface:

- `LocalBroker`: in this process only (the default, and all one process needs);
- `RedisBroker` (`redis_broker.py`): one Redis Stream per run, so a stream served by one
  process sees the events of a run executing in another, in order, and a client that
  reconnects can resume after the last event id it saw.

`publish` never blocks the run: an event is serialized at once (the run goes on changing
the objects it publishes) and delivered in the background, in publishing order.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Protocol

from assistd.domain.jsontext import dumps

FROM_START = "0"  # `after` for a subscription that wants every event the run's log still holds


@dataclass(frozen=True)
class Event:
    """One stream event; `data` is an object, or its JSON text once published; `id` is its
    position in the run's event log where there is one (Redis)."""

    event: str
    data: Any
    id: str = ""


serialize = dumps  # an event's data is encoded once, when it is published


class Subscription(Protocol):
    run_id: str

    async def get(self, timeout: float) -> Event | None:
        """The next event, or None if none came within `timeout` seconds."""

    async def close(self) -> None: ...


class Broker(Protocol):
    replays: bool  # True when `subscribe(after=…)` can replay past events

    def publish(self, run_id: str, event: str, data: Any) -> None: ...

    async def flush(self) -> None:
        """Return once every event published so far can be read by any process."""

    async def subscribe(self, run_id: str, after: str | None = None) -> Subscription:
        """Watch a run's events from now (`after=None`), or those after event id `after`."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LocalSubscription:
    """The events of one run for one stream, in order. A waiting `get` is one future and one
    timer: `asyncio.wait_for(queue.get())` made a task per event, a tenth of the CPU of a
    process streaming 100 runs' deltas."""

    def __init__(self, broker: LocalBroker, run_id: str) -> None:
        self.broker = broker
        self.run_id = run_id
        self.events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: Event) -> None:
        self.events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: float) -> Event | None:
        if not self.events and timeout > 0:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.events.popleft() if self.events else None

    async def close(self) -> None:
        self.broker._unsubscribe(self)


class LocalBroker:
    """Fan-out to the watchers in this process; keeps no log (nothing to replay)."""

    replays = False

    def __init__(self) -> None:
        self._subscribers: dict[str, set[LocalSubscription]] = defaultdict(set)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def subscribe(self, run_id: str, after: str | None = None) -> Subscription:
        sub = LocalSubscription(self, run_id)
        self._subscribers[run_id].add(sub)
        return sub

    def _unsubscribe(self, sub: LocalSubscription) -> None:
        subscribers = self._subscribers.get(sub.run_id)
        if subscribers is not None:
            subscribers.discard(sub)
            if not subscribers:
                del self._subscribers[sub.run_id]

    def publish(self, run_id: str, event: str, data: Any) -> None:
        subscribers = self._subscribers.get(run_id)
        if not subscribers:
            return
        frozen = Event(event, serialize(data))
        for sub in subscribers:
            sub.put(frozen)
