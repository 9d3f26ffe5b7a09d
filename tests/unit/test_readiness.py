"""Readiness, in process: what /readyz reports for a stopped worker or a failing database."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from assistd.http.ops import problems


class Db:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def fetchone(self, sql: str, **params: Any) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"ok": 1}


def runtime(db: Db) -> Any:
    return SimpleNamespace(store=SimpleNamespace(db=db), broker=SimpleNamespace())


def test_a_process_whose_worker_stopped_is_not_ready() -> None:
    found = asyncio.run(problems(runtime(Db()), SimpleNamespace(running=False)))
    assert list(found) == ["worker"]


def test_a_process_without_a_worker_is_ready_on_its_database_alone() -> None:
    assert asyncio.run(problems(runtime(Db()), None)) == {}
    found = asyncio.run(problems(runtime(Db(ConnectionRefusedError("refused"))), None))
    assert list(found) == ["database"] and "refused" in found["database"]
