"""Wake-ups between the processes: "a run was queued", "run X is being cancelled".

They only make things fast. The facts are in the database first (a queued run, a run in
`cancelling`), and every worker also polls it, so a lost wake-up costs at most a poll interval.

- `LocalSignals`: within one process (SQLite, or a single PostgreSQL process);
- `PostgresSignals`: PostgreSQL LISTEN/NOTIFY, so a cancel accepted by any API process
  reaches the worker executing the run, and a run queued anywhere wakes every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import asyncpg

from assistd.storage.db import DatabaseUnavailable, Executor

log = logging.getLogger("assistd.signals")
QUEUED_CHANNEL = "assistd_run_queued"
CANCEL_CHANNEL = "assistd_run_cancel"
RECONNECT_SECONDS = 1.0

CancelListener = Callable[[str], bool]  # True: the run is executed here, and is being stopped


class Signals(Protocol):
    queued: asyncio.Event  # set when a run may be waiting for a worker

    def on_cancel(self, listener: CancelListener) -> None: ...
    async def run_queued(self) -> None: ...
    async def run_cancelling(self, run_id: str) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class LocalSignals:
    def __init__(self) -> None:
        self.queued = asyncio.Event()
        self._cancel_listeners: list[CancelListener] = []

    def on_cancel(self, listener: CancelListener) -> None:
        self._cancel_listeners.append(listener)

    async def run_queued(self) -> None:
        self.queued.set()

    async def run_cancelling(self, run_id: str) -> None:
        self._cancelled(run_id)

    def _cancelled(self, run_id: str) -> bool:
        """Tell this process's listeners; whether one of them executes the run."""
        return any([listener(run_id) for listener in self._cancel_listeners])

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class PostgresSignals(LocalSignals):
    """NOTIFY on one connection of the pool; LISTEN on a dedicated connection, re-opened
    whenever it is lost (meanwhile the polling fallback carries on)."""

    def __init__(self, url: str, db: Executor) -> None:
        super().__init__()
        self.url = url
        self.db = db
        self._conn: asyncpg.Connection | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listen()
        self._keeper = asyncio.create_task(self._keep_listening(), name="assistd-listen")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)

    async def run_queued(self) -> None:
        await self._notify(QUEUED_CHANNEL, "")

    async def run_cancelling(self, run_id: str) -> None:
        # The worker that holds the run is told directly when it is this process's (the
        # cancel then waits for no round trip through PostgreSQL); no other holds it then.
        if not self._cancelled(run_id):
            await self._notify(CANCEL_CHANNEL, run_id)

    async def _notify(self, channel: str, payload: str) -> None:
        try:
            # `execute`: a write's connection, not one that waits behind the pool's readers
            await self.db.execute("SELECT pg_notify(:channel, :payload)", channel=channel, payload=payload)
        except (asyncpg.PostgresError, OSError, DatabaseUnavailable) as exc:
            log.warning("NOTIFY %s failed (%s); workers will find out by polling", channel, exc)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url)
        await conn.add_listener(QUEUED_CHANNEL, self._on_notify)
        await conn.add_listener(CANCEL_CHANNEL, self._on_notify)
        self._conn = conn

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        if channel == QUEUED_CHANNEL:
            self.queued.set()
        elif channel == CANCEL_CHANNEL:
            self._cancelled(str(payload))

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            if self._conn is not None and not self._conn.is_closed():
                continue
            try:
                await self._listen()
                self.queued.set()  # something may have been queued while we were deaf
                log.info("listening for wake-ups again")
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
