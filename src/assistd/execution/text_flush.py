"""Partial answers made durable while they stream: every run's in one write.

A streaming turn keeps its message's text so far in the database (retrievable, and kept if
the process dies). Each turn used to write it itself, every second: runs started together
flushed together, so 100 runs made bursts of 100 writes that filled SQLite's one writer
and PostgreSQL's connection pool, and a cancel's own write waited behind them for up to a
second. Now a turn only marks its message due; one task writes every due message every
FLUSH_SECONDS, FLUSH_BATCH messages a transaction (one statement each): a cancel's write
waits behind one short batch (about 2 ms for 16 messages on the benchmark machine), not
behind all of them (14 ms for 71). A turn about to write its message's final state takes it
out first (`forget`), so no flush can land after that write.
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
FLUSH_BATCH = 16  # messages per transaction
Obj = dict[str, Any]
Snapshot = Callable[[], Obj | None]  # the message as it is now


class TextFlusher:
    def __init__(self, store: Store, period: float = FLUSH_SECONDS) -> None:
        self.store = store
        self.period = period
        self._due: dict[str, Snapshot] = {}
        self._in_flight: frozenset[str] = frozenset()  # the batch being written
        self._pending: set[str] = set()  # the current flush's later batches
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
        self._pending.discard(message_id)
        while message_id in self._in_flight:
            await self._idle.wait()

    async def _loop(self) -> None:
        while self._due:
            await asyncio.sleep(self.period)
            await self.flush()

    async def flush(self) -> None:
        due, self._due = self._due, {}
        messages = [message for snapshot in due.values() if (message := snapshot()) is not None]
        self._pending = {m["id"] for m in messages}
        try:
            for start in range(0, len(messages), FLUSH_BATCH):
                if start:
                    await asyncio.sleep(0)  # what waits for the loop (a cancel, say) goes first
                batch = [m for m in messages[start:start + FLUSH_BATCH] if m["id"] in self._pending]
                if batch:
                    await self._write(batch, due)
        finally:
            self._pending = set()

    async def _write(self, messages: list[Obj], due: dict[str, Snapshot]) -> None:
        ids = [m["id"] for m in messages]
        self._in_flight = frozenset(ids)
        self._pending.difference_update(ids)
        self._idle.clear()
        try:
            async with self.store.db.transaction(inline=True) as tx:
                await self.store.runs.save_message_bodies(tx, messages)
            for message_id in ids:
                self._unreachable.pop(message_id, None)
        except DatabaseUnavailable as exc:
            log.warning("could not save the partial text of %d messages: %s", len(messages), exc)
            self._unreachable.update(dict.fromkeys(ids, exc))
            self._due_again({i: due[i] for i in ids})
        except Exception:  # the next flush, or the turn's end, writes them
            log.exception("could not save the partial text of %d messages", len(messages))
            self._due_again({i: due[i] for i in ids})
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
