"""Every request: an `x-request-id` header (as OpenAI's responses carry), one access log line,
its count and duration by route template, a server span, and the open-streams gauge.

A plain ASGI middleware, outermost, so refused requests (401) are seen too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assistd.http.edge import CLIENT_GONE
from assistd.observability import metrics, tracing

access = logging.getLogger("assistd.access")
UNMATCHED = "unmatched"
# nginx's status for a client that went away before its request was whole: nothing was answered
CLIENT_CLOSED_REQUEST = 499  # any path no route serves: one label, whatever clients send


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


def endpoint_templates(routes: Sequence[BaseRoute], prefix: str = "") -> dict[Any, str]:
    """Each endpoint's route template, where an endpoint serves one route only: after routing,
    the scope names the endpoint, so most requests need no matching of their own."""
    found: dict[Any, str] = {}
    shared: set[Any] = set()
    for route in routes:
        if isinstance(route, Mount):
            inner = endpoint_templates(route.routes, prefix + route.path)
            shared |= inner.keys() & found.keys()
            found.update(inner)
        elif (endpoint := getattr(route, "endpoint", None)) is not None:
            if endpoint in found:
                shared.add(endpoint)
            found[endpoint] = prefix + str(getattr(route, "path", ""))
    return {endpoint: path for endpoint, path in found.items() if endpoint not in shared}


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self.templates = endpoint_templates(routes)

    def _route(self, scope: Scope, path: str) -> str:
        """After routing: the template of the endpoint that answered, else matched again."""
        found = self.templates.get(scope.get("endpoint"))
        return found or route_template(self.routes, {**scope, "path": path, "root_path": ""})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = new_request_id()
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "stream": False}

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
                if _is_stream(headers):
                    state["stream"] = True
                    metrics.ACTIVE_STREAMS.inc()
            await send(message)

        path = scope["path"]  # routing rewrites the scope: keep what the client asked
        span = _server_span(scope, request_id) if tracing.enabled() else contextlib.nullcontext()
        with span as current:
            try:
                await self.app(scope, receive, send_observed)
            finally:
                if state["stream"]:
                    metrics.ACTIVE_STREAMS.dec()
                route = self._route(scope, path)
                if current is not None:
                    current.update_name(f"{scope['method']} {route}")
                    tracing.set_attributes(current, **{"http.response.status_code": state["status"],
                                                       "http.route": route})
                if scope.get(CLIENT_GONE):
                    state["status"] = CLIENT_CLOSED_REQUEST
                self._record(scope["method"], path, route, request_id, state["status"],
                             time.perf_counter() - started)

    @staticmethod
    def _record(method: str, path: str, route: str, request_id: str, status: int, seconds: float) -> None:
        _counted(method, route, status).inc()
        _timed(route).observe(seconds)
        access.info("%s %s %d %.1fms %s", method, path, status, seconds * 1000, request_id,
                    extra={"method": method, "path": path, "status": status,
                           "duration_ms": round(seconds * 1000, 1), "request_id": request_id})


def _is_stream(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(key == b"content-type" and value.startswith(b"text/event-stream") for key, value in headers)


def _server_span(scope: Scope, request_id: str) -> contextlib.AbstractContextManager[Any]:
    return tracing.span(f"{scope['method']}", {
        "http.request.method": scope["method"], "url.path": scope["path"], "assistd.request_id": request_id,
    }, parent=tracing.from_headers(_headers(scope)), kind="server")


# The metrics' children by label values, kept: `labels()` validates and locks on every call.
# Bounded: methods are those the HTTP parser knows, routes are templates, statuses are few.
@functools.lru_cache(maxsize=4096)
def _counted(method: str, route: str, status: int) -> Any:
    return metrics.HTTP.labels(method, route, str(status))


@functools.lru_cache(maxsize=1024)
def _timed(route: str) -> Any:
    return metrics.HTTP_SECONDS.labels(route)
