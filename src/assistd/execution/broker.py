"""Stream events of runs, fanned out to the SSE responses watching them (in this process).

Publishing never blocks the run: each subscriber has its own unbounded queue.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One stream event; `data` is an object, or its JSON text once published."""

    event: str
    data: Any


class Subscription:
    """One watcher's queue of a run's events; `close()` when done watching."""

    def __init__(self, broker: Broker, run_id: str) -> None:
        self.broker = broker
        self.run_id = run_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def close(self) -> None:
        self.broker._unsubscribe(self)


class Broker:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)

    def subscribe(self, run_id: str) -> Subscription:
        sub = Subscription(self, run_id)
        self._subscribers[run_id].add(sub.queue)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subscribers = self._subscribers.get(sub.run_id)
        if subscribers is not None:
            subscribers.discard(sub.queue)
            if not subscribers:
                del self._subscribers[sub.run_id]

    def publish(self, run_id: str, event: str, data: Any) -> None:
        """Queue `data` as it is now: it is serialized here, because the run goes on changing
        the objects it publishes (a message's text grows after its delta was sent)."""
        subscribers = self._subscribers.get(run_id)
        if not subscribers:
            return
        frozen = Event(event, json.dumps(data, separators=(",", ":"), ensure_ascii=False))
        for queue in subscribers:
            queue.put_nowait(frozen)


class Signals:
    """Wake-ups between the HTTP side and the worker: a run was queued, a run is cancelling.

    They only speed things up: the worker also polls the database, so a lost wake-up
    (or one sent from another process) delays work by at most one poll interval.
    """

    def __init__(self) -> None:
        self.queued = asyncio.Event()
        self._cancel_listeners: list[Any] = []

    def run_queued(self) -> None:
        self.queued.set()

    def on_cancel(self, listener: Any) -> None:
        self._cancel_listeners.append(listener)

    def run_cancelling(self, run_id: str) -> None:
        for listener in self._cancel_listeners:
            listener(run_id)
