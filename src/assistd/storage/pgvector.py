"""pgvector, where the PostgreSQL server has it: chunk vectors in a `vector` column, searched
with its cosine distance in SQL (no copy of a store's vectors in each process's memory).

It is optional (many servers don't have the extension), so it is not a migration: at start,
if `CREATE EXTENSION vector` works, the column is added. The BYTEA copy of each vector is kept
either way, so a server without the extension (or ASSISTD_PGVECTOR=off) still searches them.
Chunks ingested before the column existed are found densely once their files are added again.
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
            await tx.execute("ALTER TABLE vector_store_chunks ADD COLUMN IF NOT EXISTS embedding_vec vector")
    except Exception as exc:  # not installed, or not allowed: the in-memory search serves
        log.info("pgvector is not used: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False
    db.pgvector = True  # type: ignore[attr-defined]
    return True


def literal(vector: list[float]) -> str:
    """A vector as pgvector's text input, e.g. `[0.1,0.2]`."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"
