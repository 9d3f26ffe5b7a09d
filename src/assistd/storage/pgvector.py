"""pgvector, where the PostgreSQL server has it: chunk vectors in a `vector` column, searched
with its cosine distance in SQL (no copy of a store's vectors in each process's memory).

The vectors have a narrow table of their own, `vector_store_chunk_vectors` (a chunk's seq,
its store, the model, the vector), deleted with their chunk by a cascading foreign key: in the
wide chunk rows the vectors were TOASTed and a scan took five times as long (83 ms against
16 ms for 9,170 chunks of 384 dimensions).

It is optional (many servers don't have the extension), so it is not a migration: at start,
if `CREATE EXTENSION vector` works, the table is made. The BYTEA copy of each vector is kept
either way, so a server without the extension (or ASSISTD_PGVECTOR=off) still searches them.
Chunks ingested before the table existed are found densely once their files are added again.
"""

from __future__ import annotations

import logging

from assistd.storage.db import Database

log = logging.getLogger("assistd.pgvector")
_LOCK = "SELECT pg_advisory_xact_lock(7413002)"


async def enable(db: Database) -> bool:
    """Use pgvector if the server has it (creating the extension and the column); else False."""
    if db.dialect != "postgresql":
        return False
    try:
        async with db.transaction() as tx:
            await tx.execute(_LOCK)
            await tx.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS vector_store_chunk_vectors ("
                "seq BIGINT PRIMARY KEY REFERENCES vector_store_chunks (seq) ON DELETE CASCADE, "
                "vector_store_id TEXT NOT NULL, model TEXT NOT NULL, embedding vector NOT NULL)")
            await tx.execute("CREATE INDEX IF NOT EXISTS vector_store_chunk_vectors_store "
                             "ON vector_store_chunk_vectors (vector_store_id, model)")
    except Exception as exc:  # noqa: BLE001 - not installed, or not allowed: the in-memory search serves
        log.info("pgvector is not used: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False
    db.pgvector = True  # type: ignore[attr-defined]
    return True


def literal(vector: list[float]) -> str:
    """A vector as pgvector's text input, e.g. `[0.1,0.2]`."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"
