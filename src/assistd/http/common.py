"""Small helpers every route uses."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from assistd.domain import jsontext
from assistd.execution.runtime import Runtime
from assistd.http.errors import read_json
from assistd.http.models import ListQuery, dump
from assistd.storage.pages import PageParams

M = TypeVar("M", bound=BaseModel)


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def body(request: Request, model: type[M]) -> M:
    return model.model_validate(await read_json(request))


async def params(request: Request, model: type[M]) -> tuple[M, dict[str, Any]]:
    """The validated body, and the same as plain data holding only the fields sent."""
    parsed = await body(request, model)
    return parsed, dump(parsed)


def page(request: Request, model: type[ListQuery] = ListQuery) -> tuple[PageParams, ListQuery]:
    query = model.model_validate(dict(request.query_params))
    return PageParams(query.limit, query.order, query.after, query.before), query


def path(request: Request, name: str) -> str:
    value: str = request.path_params[name]
    return value


class ObjectResponse(JSONResponse):
    """A JSON body encoded as events and stored columns are (domain/jsontext)."""

    def render(self, content: Any) -> bytes:
        return jsontext.dumps_bytes(content)


def ok(data: Any) -> JSONResponse:
    return ObjectResponse(data)


def deleted(object_id: str, kind: str) -> JSONResponse:
    return ObjectResponse({"id": object_id, "object": f"{kind}.deleted", "deleted": True})
