"""/v1/threads and its messages."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from assistd.domain.errors import invalid
from assistd.domain.objects import new_thread
from assistd.execution.attachments import attach_to_thread, new_thread_resources
from assistd.execution.commands import message_from_params
from assistd.execution.vision import check_images
from assistd.http.common import deleted, ok, page, params, path, runtime
from assistd.http.models import (
    ListQuery,
    MessageCreate,
    MessageListQuery,
    MetadataModify,
    ThreadCreate,
    ThreadModify,
    check_metadata,
)
from assistd.storage.thread_list import list_threads


class ThreadListQuery(ListQuery):
    assistant_id: str | None = Field(default=None, max_length=64)


async def create(request: Request) -> Response:
    store = runtime(request).store
    _, data = await params(request, ThreadCreate)
    thread = new_thread(data)
    messages = [message_from_params(thread["id"], m) for m in data.get("messages") or []]
    await check_images(runtime(request), messages)
    thread["tool_resources"] = await new_thread_resources(store, thread["tool_resources"], messages) or {}
    return ok(await store.insert_thread(thread, messages))


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters, with metadata's own bounds."""
    pairs: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[len("metadata["):-1]] = value
        elif name.startswith("metadata"):
            raise invalid(f"Invalid query parameter '{name}': use metadata[key]=value.", name)
    try:
        check_metadata(pairs)
    except ValueError as exc:
        raise invalid(f"Invalid 'metadata' filter: {exc}.", "metadata") from None
    return pairs


async def list_(request: Request) -> Response:
    """assistd's extension: threads, newest first, by assistant (any run on it) and metadata."""
    pages, query = page(request, ThreadListQuery)
    assistant_id = query.assistant_id if isinstance(query, ThreadListQuery) else None
    db = runtime(request).store.db
    return ok(await list_threads(db, db.dialect, pages, assistant_id, _metadata_filter(request)))


async def retrieve(request: Request) -> Response:
    return ok(await runtime(request).store.get_thread(path(request, "thread_id")))


async def modify(request: Request) -> Response:
    _, changes = await params(request, ThreadModify)
    return ok(await runtime(request).store.update_thread(path(request, "thread_id"), changes))


async def delete(request: Request) -> Response:
    rt, thread_id = runtime(request), path(request, "thread_id")
    active_run_id = await rt.store.delete_thread(thread_id)
    if active_run_id:
        await rt.signals.run_cancelling(active_run_id)  # stop generating for a thread that is gone
    return deleted(thread_id, "thread")


async def create_message(request: Request) -> Response:
    store = runtime(request).store
    _, data = await params(request, MessageCreate)
    message = message_from_params(path(request, "thread_id"), data)
    await check_images(runtime(request), [message])
    await attach_to_thread(store, message["thread_id"], [message])
    return ok(await store.add_user_message(message))


async def list_messages(request: Request) -> Response:
    pages, query = page(request, MessageListQuery)
    run_id = query.run_id if isinstance(query, MessageListQuery) else None
    return ok(await runtime(request).store.list_messages(path(request, "thread_id"), pages, run_id))


async def retrieve_message(request: Request) -> Response:
    store = runtime(request).store
    return ok(await store.get_message(path(request, "thread_id"), path(request, "message_id")))


async def modify_message(request: Request) -> Response:
    parsed, _ = await params(request, MetadataModify)
    store = runtime(request).store
    thread_id, message_id = path(request, "thread_id"), path(request, "message_id")
    if parsed.metadata is None:
        return ok(await store.get_message(thread_id, message_id))
    return ok(await store.update_message_metadata(thread_id, message_id, parsed.metadata))


async def delete_message(request: Request) -> Response:
    message_id = path(request, "message_id")
    await runtime(request).store.delete_message(path(request, "thread_id"), message_id)
    return deleted(message_id, "thread.message")


routes = [
    Route("/threads", create, methods=["POST"]),
    Route("/threads", list_, methods=["GET"]),
    Route("/threads/{thread_id}", retrieve, methods=["GET"]),
    Route("/threads/{thread_id}", modify, methods=["POST"]),
    Route("/threads/{thread_id}", delete, methods=["DELETE"]),
    Route("/threads/{thread_id}/messages", create_message, methods=["POST"]),
    Route("/threads/{thread_id}/messages", list_messages, methods=["GET"]),
    Route("/threads/{thread_id}/messages/{message_id}", retrieve_message, methods=["GET"]),
    Route("/threads/{thread_id}/messages/{message_id}", modify_message, methods=["POST"]),
    Route("/threads/{thread_id}/messages/{message_id}", delete_message, methods=["DELETE"]),
]
