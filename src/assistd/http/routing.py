"""Starlette's Router, trying only the routes a path could match.

Starlette tries every route in order, one regex each: a `GET /v1/threads/{t}/runs/{r}` went
through 17 of them before its own (a quarter of that request's CPU, measured). Most API paths
start with a literal segment and have a fixed number of segments, so `IndexedRouter` keeps, for
each (segment count, first segment) of its routes, the routes that path could match, in their
original order: those with that shape, and those whose shape is open (a parameter first, a
`{…:path}` parameter, a Mount). A request whose shape is not in the index tries the open ones.

Routing stays Starlette's: the candidates are matched exactly as `Router.app` matches them, and
whatever does not match a candidate fully (404, 405, a trailing slash) goes through
`Router.app` itself, which finds what it would have found, since every route that can match a
path, fully or for another method, is among that path's candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send

Shape = tuple[int, str]


def route_shape(route: BaseRoute) -> Shape | None:
    """(segment count, first segment) of the paths a route matches, or None when open."""
    if not isinstance(route, Route) or ":path}" in route.path:
        return None
    first = route.path[1:].partition("/")[0]
    if "{" in first:
        return None
    return route.path.count("/"), first


def path_shape(path: str) -> Shape:
    return path.count("/"), path[1:].partition("/")[0]


def candidates_by_shape(routes: Sequence[BaseRoute]) -> tuple[dict[Shape, list[BaseRoute]], list[BaseRoute]]:
    """For each shape of the routes, the routes a path of that shape could match (in order);
    and the open routes, which any path could match."""
    shapes = [route_shape(route) for route in routes]
    index = {shape: [r for r, s in zip(routes, shapes, strict=True) if s in (shape, None)]
             for shape in shapes if shape is not None}
    return index, [r for r, s in zip(routes, shapes, strict=True) if s is None]


class IndexedRouter(Router):
    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        super().__init__(routes=list(routes))
        self._index, self._open = candidates_by_shape(self.routes)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self._index.get(path_shape(get_route_path(scope)), self._open):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)  # not found, another method, lifespan: as ever
