"""The ASGI application: routes under /v1, error handlers, and the process lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount

from assistd.config import Settings
from assistd.domain.errors import AssistdError
from assistd.execution.runtime import close_runtime, open_runtime
from assistd.execution.sweeper import Sweeper
from assistd.execution.worker import Worker
from assistd.http import assistants, files, model_list, ops, runs, threads, vector_stores
from assistd.http.auth import ApiKeyMiddleware
from assistd.http.edge import EdgeMiddleware
from assistd.http.errors import (
    api_error_handler,
    database_unavailable_handler,
    http_error_handler,
    unexpected_handler,
    validation_handler,
)
from assistd.http.observe import ObserveMiddleware
from assistd.http.routing import IndexedRouter
from assistd.storage.db import DatabaseUnavailable
from assistd.ui.serve import ConsoleMiddleware

log = logging.getLogger("assistd")




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
        # /v1 first: nearly every request is one of its routes, found in one match here
        Mount("/v1", app=IndexedRouter([*assistants.routes, *files.routes, *runs.routes, *threads.routes,
                                        *vector_stores.routes, *model_list.routes])),
        *ops.routes,  # /healthz (liveness), /readyz, /metrics
    ]
    return Starlette(
        routes=routes,
        # Every request gets an id and an access line; the edge checks (Host, Content-Type, body
        # size) come next; the console's pages are public (they hold no data), so they are
        # served before the key check.
        middleware=[Middleware(ObserveMiddleware, routes=routes),
                    Middleware(EdgeMiddleware, loopback_only=not settings.api_keys,
                               max_body_bytes=settings.max_body_bytes),
                    Middleware(ConsoleMiddleware),
                    Middleware(ApiKeyMiddleware, keys=settings.api_keys)],
        exception_handlers={
            AssistdError: api_error_handler,  # the domain's errors, and HTTP's own (ApiError)
            ValidationError: validation_handler,
            HTTPException: http_error_handler,
            DatabaseUnavailable: database_unavailable_handler,
            Exception: unexpected_handler,
        },
        lifespan=lifespan,
    )
