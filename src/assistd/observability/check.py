"""`assistd check`: try each dependency as the server would use it, and print a table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from assistd.config import Settings
from assistd.observability.startup import StartupError, check_redis, database_name, where
from assistd.storage.db import open_database
from assistd.storage.migrate import _migrations

TIMEOUT = 15.0


@dataclass
class Result:
    name: str
    ok: bool | None  # None: not configured, so not checked
    detail: str
    seconds: float = 0.0


async def _database(settings: Settings) -> str:
    db = open_database(settings.resolved_database_url, 2)
    try:
        await db.connect()
    except Exception as exc:
        from assistd.observability.startup import database_problem

        raise RuntimeError(str(database_problem(settings, exc))) from exc
    try:
        shipped = {version for version, _ in _migrations()}
        try:
            rows = await db.fetchall("SELECT version FROM schema_migrations")
        except Exception:  # noqa: BLE001 - no migrations table yet (a new database): none applied
            rows = []
        missing = sorted(shipped - {int(row["version"]) for row in rows})
    finally:
        await db.close()
    place = where(settings.resolved_database_url, 5432) + "/" + database_name(settings.resolved_database_url) \
        if settings.is_postgres else settings.resolved_database_url.removeprefix("sqlite:///")
    if missing:
        raise RuntimeError(f"{place}: migrations {missing} not applied (run `assistd migrate`)")
    return f"{place}, migrations current"


async def _upstream(settings: Settings) -> str:
    url = settings.upstream_base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {settings.upstream_api_key}"} if settings.upstream_api_key else {}
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            response = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"GET {url}: cannot reach it: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered {response.status_code}: {response.text[:200]}")
    return f"GET {url}: 200"


async def _redis(settings: Settings) -> str:
    try:
        await check_redis(settings)
    except StartupError as exc:
        raise RuntimeError(str(exc)) from exc
    return f"{where(settings.redis_url, 6379)}: PONG"


async def _embeddings(settings: Settings) -> str:
    from assistd.execution.embeddings import open_embedder

    embedder = open_embedder(settings)
    assert embedder is not None
    try:
        vectors = await embedder.embed(["assistd check"])
    finally:
        await embedder.close()
    return f"{settings.embeddings_model}: a vector of {len(vectors[0])} dimensions"


async def _code(settings: Settings) -> str:
    from assistd.execution import code_tool

    pool = code_tool.open_pool(settings)
    if pool is None:
        from assistd.execution.code_interpreter import sandbox_problem

        raise RuntimeError(f"not offered: {sandbox_problem() or 'see the log'} (try `assistd setup-sandbox`)")
    try:
        result = await pool.execute("assistd-check", "1+1")
    finally:
        await pool.close()
    if "2" not in (result.logs or ""):
        raise RuntimeError(f"ran 1+1 and got {result.logs!r}")
    return "1+1 = 2 in a sandboxed kernel"


async def _one(name: str, check: Callable[[Settings], Awaitable[str]], settings: Settings) -> Result:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(settings), 120)
        ok = True
    except Exception as exc:  # noqa: BLE001 - any failure is this check's result, shown in its row
        detail, ok = str(exc) or type(exc).__name__, False
    return Result(name, ok, detail, time.perf_counter() - started)


async def run_checks(settings: Settings) -> list[Result]:
    checks: list[tuple[str, Callable[[Settings], Awaitable[str]] | None]] = [
        ("database", _database),
        ("upstream", _upstream),
        ("redis", _redis if settings.redis_url else None),
        ("embeddings", _embeddings if settings.embeddings_model else None),
        ("code_interpreter", _code if settings.code_interpreter else None),
    ]
    results = []
    for name, check in checks:
        if check is None:
            results.append(Result(name, None, "not configured"))
        else:
            results.append(await _one(name, check, settings))
    return results


def table(results: list[Result]) -> str:
    rows = [("check", "result", "time", "detail")] + [
        (r.name, {True: "ok", False: "FAILED", None: "skipped"}[r.ok],
         f"{r.seconds * 1000:.0f}ms" if r.ok is not None else "-", r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows)
