"""/v1/assistants"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from assistd.domain.objects import new_assistant
from assistd.http.common import deleted, ok, page, params, path, runtime
from assistd.http.models import AssistantCreate, AssistantModify


async def create(request: Request) -> Response:
    _, data = await params(request, AssistantCreate)
    return ok(await runtime(request).store.insert_assistant(new_assistant(data)))


async def list_(request: Request) -> Response:
    pages, _ = page(request)
    return ok(await runtime(request).store.list_assistants(pages))


async def retrieve(request: Request) -> Response:
    return ok(await runtime(request).store.get_assistant(path(request, "assistant_id")))


async def modify(request: Request) -> Response:
    _, changes = await params(request, AssistantModify)
    return ok(await runtime(request).store.update_assistant(path(request, "assistant_id"), changes))


async def delete(request: Request) -> Response:
    assistant_id = path(request, "assistant_id")
    await runtime(request).store.delete("assistants", "assistant", assistant_id)
    return deleted(assistant_id, "assistant")


routes = [
    Route("/assistants", create, methods=["POST"]),
    Route("/assistants", list_, methods=["GET"]),
    Route("/assistants/{assistant_id}", retrieve, methods=["GET"]),
    Route("/assistants/{assistant_id}", modify, methods=["POST"]),
    Route("/assistants/{assistant_id}", delete, methods=["DELETE"]),
]
