"""IndexedRouter tries only a path's candidate routes: they must hold every route that matches
the path, fully or for another method, in Starlette's order."""

from __future__ import annotations

import re

import pytest
from starlette.routing import BaseRoute, Match, Route

from assistd.http import assistants, files, model_list, runs, threads, vector_stores
from assistd.http.routing import candidates_by_shape, path_shape

API_ROUTES: list[BaseRoute] = [*assistants.routes, *files.routes, *runs.routes, *threads.routes,
                               *vector_stores.routes, *model_list.routes]
METHODS = ("GET", "POST", "DELETE", "PUT")


def sample_paths() -> list[str]:
    """A path for every route (parameters filled in), and some that no route serves."""
    paths = {re.sub(r"\{[^}]+\}", "x_1", route.path) for route in API_ROUTES if isinstance(route, Route)}
    paths |= {"/models/org/model-name", "/", "/nothing", "/threads/x/runs/y/", "/threads//runs", "/threads/x/a/b/c/d/e"}
    return sorted(paths)


def matches(routes: list[BaseRoute], method: str, path: str) -> list[tuple[int, Match]]:
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    found = [(i, route.matches(scope)[0]) for i, route in enumerate(routes)]
    return [(i, match) for i, match in found if match is not Match.NONE]


@pytest.mark.parametrize("method", METHODS)
def test_every_route_a_path_matches_is_among_its_candidates_in_order(method: str) -> None:
    index, open_routes = candidates_by_shape(API_ROUTES)
    for path in sample_paths():
        candidates = index.get(path_shape(path), open_routes)
        everywhere = [(API_ROUTES[i], match) for i, match in matches(API_ROUTES, method, path)]
        among = [(candidates[i], match) for i, match in matches(candidates, method, path)]
        assert among == everywhere, path


def test_a_run_retrieve_tries_few_routes_before_its_own() -> None:
    index, _ = candidates_by_shape(API_ROUTES)
    candidates = index[path_shape("/threads/thread_1/runs/run_1")]
    assert len(candidates) < len(API_ROUTES) / 4
    assert candidates.index(next(r for r in candidates if getattr(r, "endpoint", None) is runs.retrieve)) <= 2
