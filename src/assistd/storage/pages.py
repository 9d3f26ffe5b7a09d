"""Cursor pagination as OpenAI lists do it: limit, order, after, before, has_more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from assistd.domain.errors import InvalidRequest
from assistd.storage.db import Executor


@dataclass(frozen=True)
class PageParams:
    limit: int = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None


class UnknownCursor(InvalidRequest):
    def __init__(self, param: str, value: str) -> None:
        super().__init__(f"Invalid '{param}': no object with id '{value}' in this list.", param)


async def _cursor_seq(db: Executor, table: str, scope: str, params: dict[str, Any], name: str, value: str) -> int:
    row = await db.fetchone(f"SELECT seq FROM {table} WHERE id = :cursor_id AND {scope}", cursor_id=value, **params)
    if row is None:
        raise UnknownCursor(name, value)
    return int(row["seq"])


async def fetch_page(
    db: Executor, table: str, columns: str, scope: str, params: dict[str, Any], page: PageParams
) -> tuple[list[dict[str, Any]], bool]:
    """Rows of `table` matching `scope`, one page of them, and whether more follow."""
    where = [scope]
    asc = page.order == "asc"
    if page.after:
        seq = await _cursor_seq(db, table, scope, params, "after", page.after)
        where.append("seq > :after_seq" if asc else "seq < :after_seq")
        params = {**params, "after_seq": seq}
    if page.before:
        seq = await _cursor_seq(db, table, scope, params, "before", page.before)
        where.append("seq < :before_seq" if asc else "seq > :before_seq")
        params = {**params, "before_seq": seq}
    # With only `before`, the page is the `limit` items nearest the cursor.
    reverse = bool(page.before and not page.after)
    direction = "ASC" if asc != reverse else "DESC"
    sql = (
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)} "
        f"ORDER BY seq {direction} LIMIT :page_limit"
    )
    rows = await db.fetchall(sql, page_limit=page.limit + 1, **params)
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    if reverse:
        rows.reverse()
    return rows, has_more


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
