"""GET /v1/threads (an assistd extension): threads newest first, filtered by assistant and metadata."""

from __future__ import annotations

from typing import Any

from assistd.storage.db import Executor
from assistd.storage.documents import from_row
from assistd.storage.pages import PageParams, fetch_page, list_object

Obj = dict[str, Any]

# One metadata pair per dialect: SQLite walks the JSON text, PostgreSQL tests containment.
_PAIR = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(threads.metadata) AS m "
              "WHERE m.key = :{k} AND m.value = :{v})",
    "postgresql": "threads.metadata::jsonb @> jsonb_build_object(:{k}::text, :{v}::text)",
}


def _scope(dialect: str, assistant_id: str | None, metadata: dict[str, str]) -> tuple[str, Obj]:
    where, params = ["1 = 1"], {}
    if assistant_id:
        # A thread belongs to every assistant that has run on it.
        where.append("EXISTS (SELECT 1 FROM runs WHERE runs.thread_id = threads.id "
                     "AND runs.assistant_id = :assistant_id)")
        params["assistant_id"] = assistant_id
    for i, (key, value) in enumerate(sorted(metadata.items())):
        where.append(_PAIR[dialect].format(k=f"mk{i}", v=f"mv{i}"))
        params[f"mk{i}"], params[f"mv{i}"] = key, value
    return " AND ".join(where), params


async def list_threads(db: Executor, dialect: str, page: PageParams, assistant_id: str | None,
                       metadata: dict[str, str]) -> Obj:
    """One page of threads, by creation order, that `assistant_id` ran on and whose metadata holds every pair."""
    scope, params = _scope(dialect, assistant_id, metadata)
    rows, more = await fetch_page(db, "threads", "data, metadata", scope, params, page)
    return list_object([from_row(row) for row in rows], more)
