"""Every request: an `x-request-id` header (as OpenAI's responses carry), one access log line,
its count and duration by route template, a server span, and the open-streams gauge.

A plain ASGI middleware, outermost, so refused requests (401) are seen too.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assistd.observability import metrics, tracing

access = logging.getLogger("assistd.access")
UNMATCHED = "unmatched"  # any path no route serves: one label, whatever clients send


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The route a request goes to, as its template (`/v1/threads/{thread_id}`), not its path."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount):
            return route.path + route_template(route.routes, {**scope, **child})
        return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = new_request_id()
        route = route_template(self.routes, scope)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "stream": False}

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
                if dict(headers).get(b"content-type", b"").startswith(b"text/event-stream"):
                    state["stream"] = True
                    metrics.ACTIVE_STREAMS.inc()
            await send(message)

        parent = tracing.from_headers(_headers(scope)) if tracing.enabled() else None
        with tracing.span(f"{scope['method']} {route}", {
            "http.request.method": scope["method"], "http.route": route, "url.path": scope["path"],
            "assistd.request_id": request_id,
        }, parent=parent, kind="server") as span:
            try:
                await self.app(scope, receive, send_observed)
            finally:
                if state["stream"]:
                    metrics.ACTIVE_STREAMS.dec()
                tracing.set_attributes(span, **{"http.response.status_code": state["status"]})
                self._record(scope, route, request_id, state["status"], time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, route: str, request_id: str, status: int, seconds: float) -> None:
        metrics.HTTP.labels(scope["method"], route, str(status)).inc()
        metrics.HTTP_SECONDS.labels(route).observe(seconds)
        access.info("%s %s %d %.1fms %s", scope["method"], scope["path"], status, seconds * 1000, request_id,
                    extra={"method": scope["method"], "path": scope["path"], "status": status,
                           "duration_ms": round(seconds * 1000, 1), "request_id": request_id})
