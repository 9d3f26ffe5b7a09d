"""Vector store steps the retrieval benchmarks share, through the official SDK: upload, ingest, wait."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import openai

BATCH_FILES = 2000  # the most file ids one file batch takes
UPLOADS_AT_ONCE = 8
POLL_SECONDS = 0.1

# No upstream is needed to ingest and search (without upstream embeddings): nothing listens here.
NO_UPSTREAM = "http://127.0.0.1:9/v1"


def static_chunking(max_tokens: int, overlap: int) -> Any:
    return {"type": "static", "static": {"max_chunk_size_tokens": max_tokens, "chunk_overlap_tokens": overlap}}


async def upload(client: openai.AsyncOpenAI, documents: list[tuple[str, bytes]]) -> list[str]:
    """Upload (filename, bytes) pairs with `purpose=assistants`; their file ids, in order."""
    gate = asyncio.Semaphore(UPLOADS_AT_ONCE)

    async def one(name: str, data: bytes) -> str:
        async with gate:
            return (await client.files.create(file=(name, data), purpose="assistants")).id

    return list(await asyncio.gather(*(one(name, data) for name, data in documents)))


@dataclass
class Ingested:
    seconds: float  # from the first batch's create request to the last file out of `in_progress`
    counts: dict[str, int] = field(default_factory=dict)  # file_counts summed over the batches
    finished: bool = True
    errors: list[str] = field(default_factory=list)  # last_error of failed files (a few)


async def ingest(client: openai.AsyncOpenAI, store_id: str, file_ids: list[str], chunking: Any,
                 limit: float) -> Ingested:
    """Attach the files as batches of ≤ 2,000 and wait (polling every 0.1 s, at most `limit`
    seconds) until none is `in_progress`."""
    start = time.perf_counter()
    batches = [await client.vector_stores.file_batches.create(
        store_id, file_ids=file_ids[i:i + BATCH_FILES], chunking_strategy=chunking)
        for i in range(0, len(file_ids), BATCH_FILES)]
    pending = {b.id for b in batches}
    counts: dict[str, int] = {}
    while pending and time.perf_counter() - start < limit:
        for batch_id in sorted(pending):
            batch = await client.vector_stores.file_batches.retrieve(batch_id, vector_store_id=store_id)
            if batch.status != "in_progress":
                pending.discard(batch_id)
                for key, value in batch.file_counts.model_dump().items():
                    counts[key] = counts.get(key, 0) + int(value)
        if pending:
            await asyncio.sleep(POLL_SECONDS)
    result = Ingested(time.perf_counter() - start, counts, finished=not pending)
    if counts.get("failed"):
        result.errors = await _failures(client, store_id)
    return result


async def _failures(client: openai.AsyncOpenAI, store_id: str) -> list[str]:
    page = await client.vector_stores.files.list(store_id, filter="failed", limit=5)
    return [f"{f.id}: {f.last_error.code if f.last_error else '?'} {f.last_error.message if f.last_error else ''}"
            for f in page.data]


def ingested_text(result: Ingested) -> str:
    state = "" if result.finished else " — NOT FINISHED within the time limit"
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v and k != "total")
    errors = "; failures: " + " | ".join(result.errors) if result.errors else ""
    return f"{result.seconds:.1f} s ({counts or 'no counts'}){state}{errors}"
