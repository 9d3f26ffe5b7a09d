"""/v1/threads/{thread_id}/runs, /v1/threads/runs, and run steps."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from assistd.domain.errors import invalid
from assistd.domain.objects import new_thread
from assistd.execution import attachments, commands, fallback, file_search
from assistd.execution.broker import FROM_START, Event
from assistd.execution.runtime import Runtime
from assistd.execution.vision import check_images
from assistd.http.common import ok, page, params, path, runtime
from assistd.http.models import MetadataModify, RunCreate, SubmitToolOutputs, ThreadAndRunCreate
from assistd.http.sse import stream_response
from assistd.lifecycle import changes
from assistd.lifecycle.records import Run, RunRow

Obj = dict[str, Any]
EVENT_ID = re.compile(r"\d{1,20}(-\d{1,20})?")


# _read_first: a POST reads its body before refusing a bad `include`: answered with its body
# unread, the connection was closed under a client that had already sent its next request on
# it (a reset, seen once in test_file_search under load).


def step_shape(request: Request) -> Callable[[Obj], Obj] | None:
    """How run steps are shown for the request's `include[]`: None keeps them whole."""
    include = request.query_params.getlist("include[]") + request.query_params.getlist("include")
    for value in include:
        if value != file_search.INCLUDE_CONTENT:
            raise invalid(f"Invalid value for 'include': '{value}'. Supported values are: "
                          f"'{file_search.INCLUDE_CONTENT}'.", "include")
    return None if include else file_search.without_content


def _shown(step: Obj, shape: Callable[[Obj], Obj] | None) -> Obj:
    return step if shape is None else shape(step)


async def _start(rt: Runtime, run_id: str, stream: bool, insert: Awaitable[Run], before: list[Event],
                 shape: Callable[[Obj], Obj] | None = None) -> Response:
    """Insert a new run and answer with it, or with its event stream from `thread.run.created`.

    The stream subscribes before the insert, so not even a fast worker's first event is missed.
    """
    sub = await rt.broker.subscribe(run_id, FROM_START) if stream else None
    try:
        run = await insert
    except BaseException:
        if sub is not None:
            await sub.close()
        raise
    await rt.signals.run_queued()
    if sub is None:
        return ok(run)
    return stream_response(rt, sub, [*before, Event("thread.run.created", run), *changes.queued_events(run)],
                           shape)


async def create(request: Request) -> Response:
    rt, thread_id = runtime(request), path(request, "thread_id")
    parsed, data = await params(request, RunCreate)  # the body first: see _read_first
    shape = step_shape(request)
    assistant = await rt.store.get_assistant(parsed.assistant_id)
    row, extra = commands.new_run(rt, thread_id, assistant, data)
    await check_images(rt, extra)
    await attachments.attach_to_thread(rt.store, thread_id, extra)
    return await _start(rt, row["id"], bool(parsed.stream), _insert_run(rt, None, [], row, extra), [], shape)


async def _insert_run(rt: Runtime, thread: Obj | None, messages: list[Obj], row: RunRow,
                      extra: list[Obj]) -> Run:
    """The new run (with `thread`, its new thread and messages) in one transaction."""
    async with rt.store.db.transaction(inline=True) as tx:  # bounded by the body's size
        if thread is not None:
            await rt.store.insert_thread(thread, messages, tx)
        return await changes.create(tx, rt.lifecycle.records, row, extra)


async def create_thread_and_run(request: Request) -> Response:
    rt = runtime(request)
    parsed, data = await params(request, ThreadAndRunCreate)  # the body first: see _read_first
    shape = step_shape(request)
    assistant = await rt.store.get_assistant(parsed.assistant_id)
    thread_params = data.get("thread") or {}
    if data.get("tool_resources"):
        thread_params["tool_resources"] = data["tool_resources"]
    thread = new_thread(thread_params)
    messages = [commands.message_from_params(thread["id"], m) for m in thread_params.get("messages") or []]
    await check_images(rt, messages)
    thread["tool_resources"] = await attachments.new_thread_resources(
        rt.store, thread["tool_resources"], messages) or {}
    row, _ = commands.new_run(rt, thread["id"], assistant, data)
    insert = _insert_run(rt, thread, messages, row, [])
    return await _start(rt, row["id"], bool(parsed.stream), insert, [Event("thread.created", thread)], shape)


async def list_(request: Request) -> Response:
    pages, _ = page(request)
    store, thread_id = runtime(request).store, path(request, "thread_id")
    await store.get_thread(thread_id)  # 404 for an unknown thread
    return ok(await store.runs.list_runs(thread_id, pages))


async def retrieve(request: Request) -> Response:
    return ok(await runtime(request).store.runs.get_run(path(request, "thread_id"), path(request, "run_id")))


async def modify(request: Request) -> Response:
    parsed, _ = await params(request, MetadataModify)
    runs = runtime(request).store.runs
    thread_id, run_id = path(request, "thread_id"), path(request, "run_id")
    if parsed.metadata is None:
        return ok(await runs.get_run(thread_id, run_id))
    return ok(await runs.update_run_metadata(thread_id, run_id, parsed.metadata))


async def cancel(request: Request) -> Response:
    rt = runtime(request)
    return ok(await changes.cancel(rt.lifecycle, path(request, "thread_id"), path(request, "run_id")))


async def submit_tool_outputs(request: Request) -> Response:
    rt, thread_id, run_id = runtime(request), path(request, "thread_id"), path(request, "run_id")
    parsed, data = await params(request, SubmitToolOutputs)  # the body first: see _read_first
    shape = step_shape(request)
    # Read before the run moves on (it waits for these outputs), so a fallback knows the past.
    delivered = await fallback.delivered_now(rt.store, run_id) if parsed.stream else None
    sub = await rt.broker.subscribe(run_id) if parsed.stream else None
    try:
        run, steps = await changes.submit_tool_outputs(rt.lifecycle, thread_id, run_id, data["tool_outputs"])
    except BaseException:
        if sub is not None:
            await sub.close()
        raise
    if sub is None:
        return ok(run)
    return stream_response(rt, sub, changes.queued_events(run, steps), shape, delivered)


async def events(request: Request) -> Response:
    """assistd's own addition: follow a run's events from any API process.

    With `Last-Event-ID` (or `?after=`), the events after that id, where the run's event log
    still holds them (Redis); `after=0` replays the whole log. Otherwise the run as it is now
    (`thread.run.<status>`), then what happens next. Ends like any run stream.
    """
    rt, thread_id, run_id = runtime(request), path(request, "thread_id"), path(request, "run_id")
    after = request.headers.get("last-event-id") or request.query_params.get("after")
    if after and not EVENT_ID.fullmatch(after):
        raise invalid(f"Invalid event id '{after}': expected one from a frame's `id:` line, or 0.", "after")
    await rt.store.runs.get_run(thread_id, run_id)  # 404 for an unknown run
    if after and rt.broker.replays:
        past = None if after == FROM_START else await fallback.delivered_now(rt.store, run_id)
        return stream_response(rt, await rt.broker.subscribe(run_id, after), [], delivered=past)
    sub = await rt.broker.subscribe(run_id)
    try:
        run = await rt.store.runs.get_run(thread_id, run_id)  # read after subscribing: nothing falls between
        delivered = await fallback.delivered_now(rt.store, run_id)
    except BaseException:
        await sub.close()
        raise
    return stream_response(rt, sub, [Event(f"thread.run.{run['status']}", run)], delivered=delivered)


async def list_steps(request: Request) -> Response:
    shape = step_shape(request)
    pages, _ = page(request)
    store = runtime(request).store
    listed = await store.runs.list_steps(path(request, "thread_id"), path(request, "run_id"), pages)
    return ok({**listed, "data": [_shown(step, shape) for step in listed["data"]]})


async def retrieve_step(request: Request) -> Response:
    shape = step_shape(request)
    store = runtime(request).store
    step = await store.runs.get_step(path(request, "thread_id"), path(request, "run_id"), path(request, "step_id"))
    return ok(_shown(dict(step), shape))


routes = [
    Route("/threads/runs", create_thread_and_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs", create, methods=["POST"]),
    Route("/threads/{thread_id}/runs", list_, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}", retrieve, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}", modify, methods=["POST"]),
    Route("/threads/{thread_id}/runs/{run_id}/cancel", cancel, methods=["POST"]),
    Route("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", submit_tool_outputs, methods=["POST"]),
    Route("/threads/{thread_id}/runs/{run_id}/events", events, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}/steps", list_steps, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}/steps/{step_id}", retrieve_step, methods=["GET"]),
]
