"""A run's stream when its events stop coming: carry on from the database.

Events reach a stream through the broker; Redis may be lost, and a run executing in a process
this one can't hear (no Redis) publishes nothing here. The database holds the run, its steps
and its messages (text flushed as it streams), so a stream that goes quiet compares what it
has sent with what the database holds and sends the difference as a worker would have: new
steps and messages, the missing text as one delta, completions, and the run's own event last
— never a run's final event before its message's.

Once a stream has sent events read from the database it stays on the database: the broker's
events (if they come back) would repeat what it already sent.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from assistd.execution.broker import Event, Subscription
from assistd.lifecycle.records import Message, RunView, Step
from assistd.lifecycle.states import STREAM_STOPS, RunStatus
from assistd.storage.db import DatabaseUnavailable
from assistd.storage.store import Store

Obj = dict[str, Any]
QUIET_SECONDS = 5.0  # a stream quiet this long asks the database whether it missed something
POLL_SECONDS = 1.0  # how often a stream on the database reads it (the worker flushes text every second)
RUN_STATUSES = frozenset(status.value for status in RunStatus)
SHOWN_RUN_STATUSES = STREAM_STOPS | {RunStatus.IN_PROGRESS, RunStatus.CANCELLING}
ENDED = frozenset({"completed", "incomplete", "failed", "cancelled", "expired"})


def _data(event: Event) -> Obj:
    data = event.data
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[no-any-return]


def text_index(message: Message) -> int:
    """Where the message's text part is (images come before it), or where it will be."""
    content = message.get("content") or []
    for index, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "text":
            return index
    return len(content)


def text_of(message: Message) -> str:
    """The text deltas build: the message's text content part."""
    content = message.get("content") or []
    index = text_index(message)
    return str(content[index]["text"]["value"]) if index < len(content) else ""


def _delta_text(data: Obj) -> str:
    parts = (data.get("delta") or {}).get("content") or []
    return "".join(p["text"]["value"] for p in parts if p.get("type") == "text")


@dataclass
class Delivered:
    """What one stream has sent of a run: the run's status, each step's and message's last
    event, and how much of each message's text."""

    run_status: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    text: dict[str, int] = field(default_factory=dict)

    @classmethod
    def as_now(cls, run: RunView, messages: Sequence[Message], steps: Sequence[Step]) -> Delivered:
        """A stream joining a run that already has a past: that past counts as sent."""
        return cls(run["status"], {s["id"]: s["status"] for s in steps},
                   {m["id"]: m["status"] for m in messages}, {m["id"]: len(text_of(m)) for m in messages})

    def note(self, event: Event) -> None:
        name = event.event
        if name == "thread.message.delta":
            data = _data(event)
            self.text[data["id"]] = self.text.get(data["id"], 0) + len(_delta_text(data))
        elif name.startswith("thread.message."):
            self.messages[_data(event)["id"]] = name.rsplit(".", 1)[1]
        elif name.startswith("thread.run.step."):
            if not name.endswith(".delta"):
                self.steps[_data(event)["id"]] = name.rsplit(".", 1)[1]
        elif name.startswith("thread.run."):
            status = name.rsplit(".", 1)[1]
            self.run_status = status if status in RUN_STATUSES else RunStatus.QUEUED.value

    def missed(self, run: RunView, messages: Sequence[Message], steps: Sequence[Step]) -> list[Event]:
        """What the database holds that this stream has not sent, in a worker's order."""
        events = [*self._new_steps(steps), *self._message_events(messages), *self._ended_steps(steps)]
        status = run["status"]
        if status != self.run_status and status in SHOWN_RUN_STATUSES:
            events.append(Event(f"thread.run.{status}", run))
        for event in events:
            self.note(event)
        return events

    def _new_steps(self, steps: Sequence[Step]) -> list[Event]:
        events = []
        for step in steps:
            if step["id"] not in self.steps:
                opened = {**step, "status": "in_progress", "completed_at": None}
                events += [Event("thread.run.step.created", opened), Event("thread.run.step.in_progress", opened)]
        return events

    def _message_events(self, messages: Sequence[Message]) -> list[Event]:
        events = []
        for message in messages:
            if message["id"] not in self.messages:
                opened = {**message, "status": "in_progress", "content": [], "completed_at": None}
                events += [Event("thread.message.created", opened), Event("thread.message.in_progress", opened)]
            text, sent = text_of(message), self.text.get(message["id"], 0)
            if len(text) > sent:
                events.append(Event("thread.message.delta", {
                    "id": message["id"], "object": "thread.message.delta",
                    "delta": {"content": [{"index": text_index(message), "type": "text",
                                           "text": {"value": text[sent:], "annotations": []}}]},
                }))
            if message["status"] in ENDED and self.messages.get(message["id"]) not in ENDED:
                events.append(Event(f"thread.message.{message['status']}", message))
        return events

    def _ended_steps(self, steps: Sequence[Step]) -> list[Event]:
        return [Event(f"thread.run.step.{step['status']}", step) for step in steps
                if step["status"] in ENDED and self.steps.get(step["id"]) not in ENDED]


async def read_state(store: Store, run_id: str) -> tuple[RunView, list[Message], list[Step]] | None:
    """The run with its messages and steps, or None once it is gone."""
    run = await store.runs.get_run_by_id(run_id)
    if run is None:
        return None
    messages = await store.runs.run_messages(run_id)
    steps = await store.runs.run_steps(run_id)
    return dict(run), messages, steps


async def delivered_now(store: Store, run_id: str) -> Delivered:
    state = await read_state(store, run_id)
    return Delivered() if state is None else Delivered.as_now(*state)


class Quiet:
    """Nothing happened within the wait."""


QUIET = Quiet()


class Follower:
    """The next events of one stream: the broker's while they come, the database's after."""

    def __init__(self, store: Store, sub: Subscription, delivered: Delivered | None = None) -> None:
        self.store = store
        self.sub = sub
        self.delivered = delivered or Delivered()
        self.on_database = False
        self._pending: deque[Event] = deque()

    def sent(self, event: Event) -> Event:
        """Count an event the stream sends without asking (its opening events)."""
        self.delivered.note(event)
        return event

    async def next(self, wait: float = math.inf) -> Event | Quiet | None:
        """The next event; QUIET when none came within `wait` seconds; None once the run is gone."""
        deadline = time.monotonic() + wait
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return QUIET
            event = await self._heard(min(QUIET_SECONDS, left))
            if event is not None:
                self.delivered.note(event)
                return event
            try:
                state = await read_state(self.store, self.sub.run_id)
            except DatabaseUnavailable:  # the broker may still be heard; ask again later
                continue
            # The read may have waited (a busy pool): what the run published meanwhile comes first.
            if not self.on_database and (event := await self.sub.get(0)) is not None:
                self.delivered.note(event)
                return event
            if state is None:
                return None
            missed = self.delivered.missed(*state)
            self.on_database = self.on_database or bool(missed)
            self._pending.extend(missed)
        return self._pending.popleft()

    async def _heard(self, wait: float) -> Event | None:
        if self.on_database:
            await asyncio.sleep(min(POLL_SECONDS, wait))
            return None
        return await self.sub.get(wait)
