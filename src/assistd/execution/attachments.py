"""Files that reach a thread for file_search: the `vector_stores` helper on thread create, and
message `attachments` with the file_search tool.

As OpenAI's do, both make a vector store for the thread (expiring 7 days after it was last
active) and name it in the thread's `tool_resources.file_search.vector_store_ids`; a thread
that already has a store gets the attached files added to it. The files are ingested in the
background; a run waits for them (see `file_search.wait_for_ingestion`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from assistd.domain import objects as o
from assistd.domain.errors import NotFound, invalid
from assistd.lifecycle.records import RunView
from assistd.storage.store import Store
from assistd.storage.vector_stores import VectorStoreStore

Obj = dict[str, Any]
THREAD_STORE_EXPIRY = {"anchor": "last_active_at", "days": 7}


def _file_search(tool_resources: Obj | None) -> Obj:
    return dict((tool_resources or {}).get("file_search") or {})


def search_file_ids(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The files that messages attach for the file_search tool, each once, in order."""
    return o.attached_file_ids(messages, "file_search")


async def tool_resource_ids(store: Store, run: RunView, tool: str, field: str) -> list[str]:
    """`tool_resources.<tool>.<field>` of the run's assistant and thread (union, in order); an
    assistant or thread deleted since the run was created brings none."""
    ids: dict[str, None] = {}
    for load, object_id in ((store.get_assistant, run["assistant_id"]), (store.get_thread, run["thread_id"])):
        try:
            owner = await load(object_id)
        except NotFound:
            continue
        for value in ((owner.get("tool_resources") or {}).get(tool) or {}).get(field) or []:
            ids.setdefault(value, None)
    return list(ids)


async def _new_store(store: Store, file_ids: list[str], helper: Obj | None = None) -> str:
    helper = helper or {}
    params = {"name": "", "metadata": helper.get("metadata") or {}, "expires_after": THREAD_STORE_EXPIRY,
              "chunking_strategy": helper.get("chunking_strategy")}
    created = await VectorStoreStore(store.db).create(params, file_ids)
    return str(created["id"])


async def resolve_helpers(store: Store, tool_resources: Obj | None) -> Obj | None:
    """Thread create: turn `file_search.vector_stores` helpers into a store, named by its id."""
    search = _file_search(tool_resources)
    helpers = search.pop("vector_stores", None)
    if helpers is None:
        return tool_resources
    if not isinstance(helpers, list) or len(helpers) > 1 or not all(isinstance(h, dict) for h in helpers):
        raise invalid("Invalid 'tool_resources.file_search.vector_stores': at most one vector store "
                      "can be created for a thread.", "tool_resources.file_search.vector_stores")
    if search.get("vector_store_ids") and helpers:
        raise invalid("Give either 'vector_store_ids' or 'vector_stores' in 'tool_resources.file_search', "
                      "not both.", "tool_resources.file_search")
    ids = [await _new_store(store, list(h.get("file_ids") or []), h) for h in helpers]
    return {**(tool_resources or {}), "file_search": {**search, "vector_store_ids": ids}}


async def attach_for_search(store: Store, tool_resources: Obj | None,
                            messages: Sequence[Mapping[str, Any]]) -> Obj | None:
    """Add the messages' file_search attachments to the thread's store, made if it has none.

    Returns the thread's new `tool_resources` when a store was made, else None (unchanged).
    """
    file_ids = search_file_ids(messages)
    if not file_ids:
        return None
    existing = _file_search(tool_resources).get("vector_store_ids") or []
    if existing:
        stores = VectorStoreStore(store.db)
        for file_id in file_ids:
            await stores.add_file(existing[0], file_id, None, None)
        return None
    new_id = await _new_store(store, file_ids)
    return {**(tool_resources or {}), "file_search": {**_file_search(tool_resources), "vector_store_ids": [new_id]}}


async def attach_to_thread(store: Store, thread_id: str, messages: Sequence[Mapping[str, Any]]) -> None:
    """For messages added to an existing thread: attach, and record a store made for it."""
    if not search_file_ids(messages):
        return
    thread = await store.get_thread(thread_id)
    changed = await attach_for_search(store, thread.get("tool_resources"), messages)
    if changed is not None:
        await store.update_thread(thread_id, {"tool_resources": changed})


async def new_thread_resources(store: Store, tool_resources: Obj | None,
                               messages: Sequence[Mapping[str, Any]]) -> Obj | None:
    """For a thread being created: its `tool_resources` with helpers and attachments resolved."""
    resolved = await resolve_helpers(store, tool_resources)
    return await attach_for_search(store, resolved, messages) or resolved
