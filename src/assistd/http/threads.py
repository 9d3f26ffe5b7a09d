"""/v1/threads and its messages."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from assistd.domain.objects import new_thread
from assistd.execution.attachments import attach_to_thread, new_thread_resources
from assistd.execution.commands import message_from_params
from assistd.execution.vision import check_images
from assistd.http.common import deleted, ok, page, params, path, runtime
from assistd.http.models import (
    MessageCreate,
    MessageListQuery,
    MetadataModify,
    ThreadCreate,
    ThreadModify,
)


async def create(request: Request) -> Response:
    store = runtime(request).store
    _, data = await params(request, ThreadCreate)
    thread = new_thread(data)
    messages = [message_from_params(thread["id"], m) for m in data.get("messages") or []]
    await check_images(runtime(request), messages)
    thread["tool_resources"] = await new_thread_resources(store, thread["tool_resources"], messages) or {}
    return ok(await store.insert_thread(thread, messages))


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
    Route("/threads/{thread_id}", retrieve, methods=["GET"]),
    Route("/threads/{thread_id}", modify, methods=["POST"]),
    Route("/threads/{thread_id}", delete, methods=["DELETE"]),
    Route("/threads/{thread_id}/messages", create_message, methods=["POST"]),
    Route("/threads/{thread_id}/messages", list_messages, methods=["GET"]),
    Route("/threads/{thread_id}/messages/{message_id}", retrieve_message, methods=["GET"]),
    Route("/threads/{thread_id}/messages/{message_id}", modify_message, methods=["POST"]),
    Route("/threads/{thread_id}/messages/{message_id}", delete_message, methods=["DELETE"]),
]
