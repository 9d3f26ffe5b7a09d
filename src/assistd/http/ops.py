"""What operators and orchestrators ask of a process: liveness, readiness, metrics.

The same routes serve the API and, on ASSISTD_METRICS_PORT, a worker-only process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from assistd.execution.runtime import Runtime
from assistd.http.auth import ApiKeyMiddleware
from assistd.http.errors import RETRY_AFTER_SECONDS
from assistd.observability import metrics
from assistd.storage import stats

log = logging.getLogger("assistd")
CHECK_SECONDS = 3.0


async def _database(rt: Runtime) -> None:
    await rt.store.db.fetchone("SELECT 1 AS ok")


async def _redis(rt: Runtime) -> None:
    redis = getattr(rt.broker, "redis", None)
    if redis is not None:
        await redis.ping()


async def problems(rt: Runtime, worker: Any) -> dict[str, str]:
    """What keeps this process from serving: an empty dict when it is ready."""
    found: dict[str, str] = {}
    for name, check in (("database", _database), ("redis", _redis)):
        try:
            await asyncio.wait_for(check(rt), CHECK_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any failure makes the process not ready, and is named
            found[name] = f"unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
    if worker is not None and not worker.running:
        found["worker"] = "this process's run worker is not running"
    return found


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: the database (and Redis, and this process's worker) work."""
    found = await problems(request.app.state.runtime, getattr(request.app.state, "worker", None))
    if found:
        return JSONResponse({"status": "unavailable", "problems": found}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return JSONResponse({"status": "ok"})


async def _read_gauges(rt: Runtime, worker: Any) -> None:
    metrics.EXECUTING.set(len(worker.turns) if worker is not None else 0)
    pool = rt.code_pool
    metrics.CODE_SESSIONS.set(len(pool.sessions) if pool is not None else 0)
    try:
        runs = await asyncio.wait_for(stats.run_counts(rt.store.db), CHECK_SECONDS)
        files = await asyncio.wait_for(stats.ingestion_counts(rt.store.db), CHECK_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the scrape still answers, with the database marked down
        log.warning("metrics: could not read counts from the database: %s", exc)
        metrics.DATABASE_UP.set(0)
        return
    metrics.DATABASE_UP.set(1)
    metrics.set_database_gauges(runs, files)


async def metrics_endpoint(request: Request) -> Response:
    await _read_gauges(request.app.state.runtime, getattr(request.app.state, "worker", None))
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]


def worker_app(rt: Runtime, worker: Any, api_keys: tuple[str, ...]) -> Starlette:
    """A worker-only process's HTTP: these three routes, with the API's key check."""
    app = Starlette(routes=routes, middleware=[Middleware(ApiKeyMiddleware, keys=api_keys)])
    app.state.runtime, app.state.worker = rt, worker
    return app
