"""Counts an operator watches, read from the database when metrics are scraped."""

from __future__ import annotations

from assistd.storage.db import Database


async def run_counts(db: Database) -> dict[str, int]:
    """Live runs by status (queued, in_progress, requires_action, cancelling): deployment-wide."""
    rows = await db.fetchall(
        "SELECT status, COUNT(*) AS n FROM runs "
        "WHERE status IN ('queued', 'in_progress', 'requires_action', 'cancelling') GROUP BY status")
    return {str(row["status"]): int(row["n"]) for row in rows}


async def ingestion_counts(db: Database) -> dict[str, int]:
    """Vector store files by ingestion status."""
    rows = await db.fetchall("SELECT status, COUNT(*) AS n FROM vector_store_files GROUP BY status")
    return {str(row["status"]): int(row["n"]) for row in rows}
