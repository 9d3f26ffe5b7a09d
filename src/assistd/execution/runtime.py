"""What the HTTP side and the worker share inside one process, and how it is put together.

Which broker and which signals a process uses follows from the settings alone, so every
process of a deployment (API or worker) makes the same choice.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from assistd.config import SettingError, Settings
from assistd.execution import loop_lag
from assistd.execution.broker import Broker, LocalBroker
from assistd.execution.embeddings import LocalEmbedder, UpstreamEmbedder, local_model_problem, open_embedder
from assistd.execution.retrieval import Retriever
from assistd.execution.signals import LocalSignals, PostgresSignals, Signals
from assistd.execution.text_flush import TextFlusher
from assistd.execution.upstream import Upstream
from assistd.lifecycle.changes import Lifecycle
from assistd.storage import pgvector
from assistd.storage.db import SQLiteDatabase, open_database
from assistd.storage.migrate import migrate
from assistd.storage.space import DiskReserve
from assistd.storage.store import Store

log = logging.getLogger("assistd")
GIL_SWITCH_SECONDS = 0.001


@dataclass
class Runtime:
    settings: Settings
    store: Store
    broker: Broker
    signals: Signals
    upstream: Upstream
    embedder: UpstreamEmbedder | LocalEmbedder | None = None
    code_pool: Any = None  # the code_interpreter sessions, in processes that execute runs and can sandbox
    disk_reserve: DiskReserve | None = None  # SQLite: room for deletes on a full data disk
    text_flush: TextFlusher = field(init=False)  # streaming runs' partial answers, written together
    lifecycle: Lifecycle = field(init=False)  # how runs change status (lifecycle/changes.py)

    def __post_init__(self) -> None:
        self.text_flush = TextFlusher(self.store)
        self.lifecycle = Lifecycle(self.store.runs, self.broker, self.signals)

    @property
    def retriever(self) -> Retriever:
        return Retriever(self.store.db, self.embedder, self.settings.retrieval)

    @property
    def shared_database(self) -> bool:
        """Other assistd processes may use this database (PostgreSQL); SQLite is ours alone."""
        return self.store.db.dialect == "postgresql"


def _broker(settings: Settings) -> Broker:
    if settings.redis_url:
        from assistd.execution.redis_broker import RedisBroker

        return RedisBroker(settings.redis_url, settings.events_ttl_seconds)
    return LocalBroker()


async def open_runtime(settings: Settings) -> Runtime:
    """Connect to the database (applying migrations), the event broker and the wake-ups."""
    if problem := local_model_problem(settings):
        raise SettingError(f"ASSISTD_EMBEDDINGS_MODEL={settings.embeddings_model}: {problem}")
    # The database's thread (aiosqlite), asyncio.to_thread work and the event loop take turns
    # at the GIL; with Python's 5 ms switch interval each handoff to or from a busy loop could
    # wait 5 ms, several times per SQLite transaction (a cancel's too). At 1 ms the cancel
    # round trip and `cancelled` showing took half as long at p50 (bench/RESULTS.md).
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    loop_lag.start()  # this process's event-loop lag, for operators (loop_lag.figures())
    url = settings.resolved_database_url
    db = open_database(url, settings.database_pool_size)
    await db.connect()
    try:
        applied = await migrate(db)
        if applied:
            log.info("applied migrations %s", applied)
        if settings.pgvector and settings.embeddings_model and await pgvector.enable(db):
            log.info("dense search by pgvector")
        signals: Signals = PostgresSignals(url, db) if db.dialect == "postgresql" else LocalSignals()
        broker = _broker(settings)
        await broker.start()
        await signals.start()
    except BaseException:
        await db.close()
        raise
    rt = Runtime(settings, Store(db), broker, signals, Upstream(settings), open_embedder(settings))
    if isinstance(db, SQLiteDatabase):  # beside the database file: its journal is what needs the room
        rt.disk_reserve = DiskReserve(db.path.parent, settings.disk_reserve_mb << 20)
        await rt.disk_reserve.keep()
    return rt


async def close_runtime(rt: Runtime) -> None:
    await rt.text_flush.close()
    await rt.signals.close()
    await rt.broker.close()
    await rt.upstream.close()
    if rt.embedder is not None:
        await rt.embedder.close()
    await rt.store.db.close()
    await loop_lag.stop()
