"""The ASGI application: routes under /v1, error handlers, and the process lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from assistd.config import Settings
from assistd.domain.errors import ApiError
from assistd.execution.runtime import Runtime, close_runtime, open_runtime
from assistd.execution.sweeper import Sweeper
from assistd.execution.worker import Worker
from assistd.http import assistants, files, ops, runs, threads, vector_stores
from assistd.http.auth import ApiKeyMiddleware
from assistd.http.observe import ObserveMiddleware
from assistd.http.errors import (
    api_error_handler,
    cursor_handler,
    http_error_handler,
    unexpected_handler,
    validation_handler,
)
from assistd.storage.pages import UnknownCursor

log = logging.getLogger("assistd")


async def healthz(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    await rt.store.db.fetchone("SELECT 1 AS ok")
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings, *, with_worker: bool = True) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rt = await open_runtime(settings)
        app.state.runtime = rt
        # Without a worker, this process still settles orphaned and expired runs.
        worker = Worker(rt) if with_worker else None
        sweeper = worker.sweeper if worker is not None else Sweeper(rt)
        app.state.worker = worker  # readiness asks whether it runs
        if worker is not None:
            await worker.start()
        else:
            sweeper.start()
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop(settings.shutdown_grace_seconds)
            await sweeper.stop()
            await close_runtime(rt)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        *[route for route in ops.routes if route.path != "/healthz"],  # /readyz, /metrics
        Mount("/v1", routes=[*assistants.routes, *files.routes, *runs.routes, *threads.routes,
                             *vector_stores.routes]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(ObserveMiddleware, routes=routes),
                    Middleware(ApiKeyMiddleware, keys=settings.api_keys)],
        exception_handlers={
            ApiError: api_error_handler,
            ValidationError: validation_handler,
            UnknownCursor: cursor_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_handler,
        },
        lifespan=lifespan,
    )
