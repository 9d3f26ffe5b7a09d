"""Partial answers made durable while they stream: every run's in one write.

A streaming turn keeps its message's text so far in the database (retrievable, and kept if
the process dies). Each turn used to write it itself, every second: runs started together
flushed together, so 100 runs made bursts of 100 writes that filled SQLite's one writer
and PostgreSQL's connection pool, and a cancel's own write waited behind them for up to a
second. Now a turn only marks its message due; one task writes every due message in one
transaction (one statement for all) every FLUSH_SECONDS. A turn about to write its message's
final state takes it out first (`forget`), so no flush can land after that write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from assistd.storage.db import DatabaseUnavailable
from assistd.storage.store import Store

log = logging.getLogger("assistd.executor")
FLUSH_SECONDS = 1.0
Obj = dict[str, Any]
Snapshot = Callable[[], Obj | None]  # the message as it is now


class TextFlusher:
    def __init__(self, store: Store, period: float = FLUSH_SECONDS) -> None:
        self.store = store
        self.period = period
        self._due: dict[str, Snapshot] = {}
        self._in_flight: frozenset[str] = frozenset()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        # Messages whose last flush found the database out of reach: their turns stop
        # generating what can't be kept (they fail, saying why, once it is back).
        self._unreachable: dict[str, DatabaseUnavailable] = {}

    def due(self, message_id: str, snapshot: Snapshot) -> None:
        """The message has new text: write it (as `snapshot()` gives it then) with the next flush."""
        self._due[message_id] = snapshot
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="assistd-text-flush")

    def outage(self, message_id: str) -> DatabaseUnavailable | None:
        """Why the message's last flush failed, when the database was out of reach."""
        return self._unreachable.get(message_id)

    async def forget(self, message_id: str) -> None:
        """No more flushes of this message; returns once none is under way."""
        self._due.pop(message_id, None)
        self._unreachable.pop(message_id, None)
        while message_id in self._in_flight:
            await self._idle.wait()

    async def _loop(self) -> None:
        while self._due:
            await asyncio.sleep(self.period)
            await self.flush()

    async def flush(self) -> None:
        batch, self._due = self._due, {}
        messages = [message for snapshot in batch.values() if (message := snapshot()) is not None]
        if not messages:
            return
        self._in_flight = frozenset(m["id"] for m in messages)
        self._idle.clear()
        try:
            async with self.store.db.transaction() as tx:
                await self.store.runs.save_message_bodies(tx, messages)
            for message_id in batch:
                self._unreachable.pop(message_id, None)
        except DatabaseUnavailable as exc:
            log.warning("could not save the partial text of %d messages: %s", len(messages), exc)
            self._unreachable.update(dict.fromkeys(batch, exc))
            self._due_again(batch)
        except Exception:  # the next flush, or the turn's end, writes them
            log.exception("could not save the partial text of %d messages", len(messages))
            self._due_again(batch)
        finally:
            self._in_flight = frozenset()
            self._idle.set()

    def _due_again(self, batch: dict[str, Snapshot]) -> None:
        for message_id, snapshot in batch.items():
            self._due.setdefault(message_id, snapshot)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
