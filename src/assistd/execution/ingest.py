"""The background ingester of vector store files.

A vector store file is created `in_progress` with no holder. An ingester (one runs next to
every worker) claims it in the database with a lease it renews, has a child process extract
and chunk the text within memory and time limits (`bounded`, `extract`), and stores the chunks together with the guarded `in_progress → completed` change
(or ends it `failed` with `last_error`). A file whose holder died is claimed again once its
lease lapses; on SQLite, which is one process's alone, every claim is dropped at start.

Tokens are approximated without a tokenizer (none can be downloaded): each run of word
characters and each other non-space character counts as one token. For English prose that is
close to OpenAI's tokenizers, a little under for long words and over for dense punctuation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from assistd.execution.bounded import Limits, extract_chunks
from assistd.execution.embeddings import EmbeddingError
from assistd.execution.extract import ExtractionError
from assistd.execution.runtime import Runtime
from assistd.storage.files import FileStore
from assistd.storage.space import is_disk_full
from assistd.storage.vector_stores import VectorStoreStore

log = logging.getLogger("assistd.ingest")
POLL_SECONDS = 0.5
CONCURRENCY = 4


# ---------------------------------------------------------------- the ingester


@dataclass(frozen=True)
class Claimed:
    vector_store_id: str
    file_id: str
    strategy: dict[str, Any]


class Ingester:
    """Claims pending vector store files from the database and ingests a few at a time."""

    def __init__(self, rt: Runtime, holder: str) -> None:
        self.rt = rt
        self.holder = f"ingest:{holder}"
        self.store = VectorStoreStore(rt.store.db)
        self.files = FileStore(rt.store.db, rt.settings.files_dir)
        self.running: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._slot_freed = asyncio.Event()
        settings = rt.settings
        self.limits = Limits(settings.ingest_memory_mb << 20, settings.ingest_seconds)

    async def start(self) -> None:
        if not self.rt.shared_database:
            await self.store.release_claims()
        self._loops = [asyncio.create_task(self._claim_loop(), name="assistd-ingest"),
                       asyncio.create_task(self._renew_loop(), name="assistd-ingest-lease")]

    async def stop(self) -> None:
        """Stop at once; files being ingested are released for any ingester to take again."""
        for task in [*self._loops, *self.running]:
            task.cancel()
        await asyncio.gather(*self._loops, *self.running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.release_claims(self.holder)

    async def _claim_loop(self) -> None:
        """Claim what there is room for; again as soon as a file is done, else every POLL_SECONDS."""
        while True:
            self._slot_freed.clear()
            try:
                await self._claim_available()
            except Exception:
                log.exception("claiming vector store files failed; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), POLL_SECONDS)

    async def _claim_available(self) -> None:
        free = CONCURRENCY - len(self.running)
        if free <= 0:
            return
        at = time.time()
        rows = await self.store.claim_files(self.holder, free, at, at - self.rt.settings.lease_seconds)
        for row in rows:
            claimed = Claimed(row["vector_store_id"], row["id"], json.loads(row["chunking_strategy"]))
            task = asyncio.create_task(self._ingest(claimed), name=f"ingest-{claimed.file_id}")
            self.running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self._slot_freed.set()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.rt.settings.heartbeat_seconds, self.rt.settings.lease_seconds / 3))
            if self.running:
                try:
                    await self.store.renew_claims(self.holder, time.time())
                except Exception:
                    log.exception("renewing ingestion leases failed")

    async def _ingest(self, claimed: Claimed) -> None:
        vs_id, file_id = claimed.vector_store_id, claimed.file_id
        try:
            filename = await self._filename(file_id)
            chunks = await extract_chunks(filename, str(self.files.path(file_id)), claimed.strategy, self.limits)
        except ExtractionError as exc:
            await self.store.fail_file(self.holder, vs_id, file_id, exc.last_error())
            return
        except Exception:
            log.exception("ingesting %s into %s failed", file_id, vs_id)
            await self.store.fail_file(self.holder, vs_id, file_id,
                                       {"code": "server_error", "message": "The file could not be processed."})
            return
        embedder = self.rt.embedder
        vectors = None
        if embedder is not None and chunks:
            try:
                vectors = await embedder.embed(chunks)
            except EmbeddingError as exc:
                await self.store.fail_file(self.holder, vs_id, file_id, {"code": "server_error", "message": str(exc)})
                return
        model = embedder.model if embedder is not None else None
        await self._finish(claimed, chunks, vectors, model)

    async def _finish(self, claimed: Claimed, chunks: list[str], vectors: Any, model: str | None) -> None:
        vs_id, file_id = claimed.vector_store_id, claimed.file_id
        try:
            if await self.store.finish_file(self.holder, vs_id, file_id, chunks, vectors, model):
                log.info("ingested %s into %s: %d chunks", file_id, vs_id, len(chunks))
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.error("storing the chunks of %s failed, the disk is full: %s", file_id, exc)
            await self.store.fail_file(self.holder, vs_id, file_id, {
                "code": "server_error", "message": "The server's data disk is full: the file's chunks could not be stored."})

    async def _filename(self, file_id: str) -> str:
        name = await self.files.filename(file_id)
        if name is None:
            raise ExtractionError("invalid_file", f"The file '{file_id}' no longer exists.")
        return name
