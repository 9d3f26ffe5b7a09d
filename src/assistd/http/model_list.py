"""/v1/models: the upstream's own models, so that `client.models.list()` and tools that pick
a model work against assistd."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from assistd.execution.model_catalog import ModelCatalog
from assistd.http.common import ok, path, runtime
from assistd.http.errors import ApiError


def catalog(request: Request) -> ModelCatalog:
    """This process's catalog, made on first use (its cache is per process)."""
    state = request.app.state
    if getattr(state, "model_catalog", None) is None:
        state.model_catalog = ModelCatalog(runtime(request).upstream)
    found: ModelCatalog = state.model_catalog
    return found


async def list_(request: Request) -> Response:
    return ok({"object": "list", "data": await catalog(request).models()})


async def retrieve(request: Request) -> Response:
    model_id = path(request, "model")
    model = await catalog(request).model(model_id)
    if model is None:
        raise ApiError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
    return ok(model)


routes = [
    Route("/models", list_, methods=["GET"]),
    Route("/models/{model:path}", retrieve, methods=["GET"]),
]
