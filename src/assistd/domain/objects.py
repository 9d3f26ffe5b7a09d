"""API objects as plain dicts, shaped exactly as OpenAI's schemas, and their storage rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from assistd.domain import jsontext
from assistd.domain.ids import new_id, now

Obj = dict[str, Any]
dumps = jsontext.dumps  # stored columns are encoded as events are


def loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# ---------------------------------------------------------------- assistants

ASSISTANT_FIELDS = (
    "name",
    "description",
    "model",
    "instructions",
    "tools",
    "tool_resources",
    "temperature",
    "top_p",
    "response_format",
)


def new_assistant(params: Obj) -> Obj:
    data = {key: params.get(key) for key in ASSISTANT_FIELDS}
    data["tools"] = params.get("tools") or []
    data["tool_resources"] = params.get("tool_resources") or {}
    for key in ("temperature", "top_p"):
        data[key] = params[key] if params.get(key) is not None else 1.0
    data["response_format"] = params.get("response_format") or "auto"
    return {
        "id": new_id("asst"),
        "object": "assistant",
        "created_at": now(),
        **data,
        "metadata": params.get("metadata") or {},
    }


# ---------------------------------------------------------------- threads


def new_thread(params: Obj) -> Obj:
    return {
        "id": new_id("thread"),
        "object": "thread",
        "created_at": now(),
        "tool_resources": params.get("tool_resources") or {},
        "metadata": params.get("metadata") or {},
    }


# ---------------------------------------------------------------- messages


def text_part(value: str) -> Obj:
    return {"type": "text", "text": {"value": value, "annotations": []}}


def content_parts(content: str | list[Obj]) -> list[Obj]:
    """A message's `content` as given on create (string or parts) → the stored parts."""
    if isinstance(content, str):
        return [text_part(content)]
    parts: list[Obj] = []
    for part in content:
        if part["type"] == "text":
            parts.append(text_part(part["text"]))
        else:
            parts.append(part)
    return parts


def new_message(
    thread_id: str,
    role: str,
    content: list[Obj],
    *,
    status: str = "completed",
    assistant_id: str | None = None,
    run_id: str | None = None,
    attachments: list[Obj] | None = None,
    metadata: Obj | None = None,
) -> Obj:
    created = now()
    return {
        "id": new_id("msg"),
        "object": "thread.message",
        "created_at": created,
        "thread_id": thread_id,
        "status": status,
        "incomplete_details": None,
        "completed_at": created if status == "completed" else None,
        "incomplete_at": None,
        "role": role,
        "content": content,
        "assistant_id": assistant_id,
        "run_id": run_id,
        "attachments": attachments or [],
        "metadata": metadata or {},
    }


def message_text(message: Mapping[str, Any]) -> str:
    return "".join(p["text"]["value"] for p in message["content"] if p["type"] == "text")


# ---------------------------------------------------------------- runs

RUN_CONFIG_FIELDS = (
    "model",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "response_format",
    "max_prompt_tokens",
    "max_completion_tokens",
    "truncation_strategy",
)
RUN_STATE_FIELDS = (
    "status",
    "started_at",
    "expires_at",
    "cancelled_at",
    "failed_at",
    "completed_at",
)
RUN_JSON_STATE_FIELDS = ("required_action", "last_error", "incomplete_details", "usage")


def run_from_row(row: Obj) -> Obj:
    data = json.loads(row["data"])
    run: Obj = {
        "id": row["id"],
        "object": "thread.run",
        "created_at": row["created_at"],
        "thread_id": row["thread_id"],
        "assistant_id": row["assistant_id"],
    }
    for key in RUN_STATE_FIELDS:
        run[key] = row[key]
    for key in RUN_JSON_STATE_FIELDS:
        run[key] = loads_or_none(row[key])
    for key in RUN_CONFIG_FIELDS:
        run[key] = data.get(key)
    run["metadata"] = json.loads(row["metadata"])
    return run


def new_run_row(thread_id: str, assistant: Obj, params: Obj, expires_in: float) -> Obj:
    """The row for a new queued run: the run's own settings override the assistant's."""
    created = now()
    config = {key: params.get(key) for key in RUN_CONFIG_FIELDS}
    for key in ("model", "tools", "temperature", "top_p", "response_format"):
        if config[key] is None:
            config[key] = assistant.get(key)
    if params.get("instructions") is None:
        config["instructions"] = assistant.get("instructions") or ""
    if params.get("additional_instructions"):
        base = config["instructions"]
        config["instructions"] = f"{base}\n\n{params['additional_instructions']}" if base else params["additional_instructions"]
    config["tools"] = config["tools"] or []
    config["tool_choice"] = config["tool_choice"] if config["tool_choice"] is not None else "auto"
    if config["parallel_tool_calls"] is None:
        config["parallel_tool_calls"] = True
    config["response_format"] = config["response_format"] or "auto"
    config["truncation_strategy"] = config["truncation_strategy"] or {
        "type": "auto",
        "last_messages": None,
    }
    return {
        "id": new_id("run"),
        "thread_id": thread_id,
        "assistant_id": assistant["id"],
        "created_at": created,
        "status": "queued",
        "data": dumps(config),
        "metadata": dumps(params.get("metadata") or {}),
        "expires_at": created + int(expires_in),
    }


# ---------------------------------------------------------------- run steps


def new_step(run: Mapping[str, Any], step_type: str, details: Obj) -> Obj:
    return {
        "id": new_id("step"),
        "object": "thread.run.step",
        "created_at": now(),
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "run_id": run["id"],
        "type": step_type,
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": details,
        "usage": None,
        "metadata": {},
    }


# ---------------------------------------------------------------- files

BATCH_FILE_SECONDS = 30 * 24 * 3600  # OpenAI's default lifetime of a `batch` file


def new_file_id() -> str:
    """OpenAI's file ids join prefix and body with a dash (`file-…`), not an underscore."""
    return "file-" + new_id("file").removeprefix("file_")


def new_file_row(file_id: str, filename: str, purpose: str, size: int, expires_after: int | None) -> Obj:
    """The row of a file whose bytes are stored; `expires_after` is seconds from creation."""
    created = now()
    if expires_after is None and purpose == "batch":
        expires_after = BATCH_FILE_SECONDS
    return {
        "id": file_id,
        "created_at": created,
        "bytes": size,
        "filename": filename,
        "purpose": purpose,
        "expires_at": None if expires_after is None else created + expires_after,
    }


def file_object(row: Obj) -> Obj:
    """The OpenAIFile object; `expires_at` only when set, as the spec has no null for it."""
    obj: Obj = {
        "id": row["id"],
        "object": "file",
        "bytes": int(row["bytes"]),
        "created_at": int(row["created_at"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
    }
    if row["expires_at"] is not None:
        obj["expires_at"] = int(row["expires_at"])
    return obj


# ---------------------------------------------------------------- vector stores

DAY_SECONDS = 24 * 3600
# What OpenAI reports for the `auto` strategy (and uses when none is given).
AUTO_CHUNKING: Obj = {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")


def resolved_chunking(strategy: Obj | None) -> Obj:
    """A request's `chunking_strategy` as stored and reported: always `static` with its sizes."""
    if not strategy or strategy.get("type") == "auto":
        return AUTO_CHUNKING
    return {"type": "static", "static": dict(strategy["static"])}


def new_vector_store_row(params: Obj) -> Obj:
    created = now()
    return {
        "id": new_id("vs"),
        "created_at": created,
        "name": params.get("name") or "",
        "metadata": dumps(params.get("metadata") or {}),
        "expires_after": None if params.get("expires_after") is None else dumps(params["expires_after"]),
        "last_active_at": created,
    }


def file_counts(by_status: dict[str, int]) -> Obj:
    counts = {status: int(by_status.get(status, 0)) for status in FILE_STATUSES}
    return {**counts, "total": sum(counts.values())}


def tool_calls_of(steps: Sequence[Mapping[str, Any]], call_type: str) -> list[Obj]:
    """The run's tool calls of one type (`file_search`, `code_interpreter`…), in step order."""
    return [c for s in steps if s["step_details"]["type"] == "tool_calls"
            for c in s["step_details"]["tool_calls"] if c["type"] == call_type]


def attached_file_ids(messages: Sequence[Mapping[str, Any]], tool: str) -> list[str]:
    """The files the messages attach for `tool`, each once, in order."""
    found: dict[str, None] = {}
    for message in messages:
        for attachment in message.get("attachments") or []:
            if any(t.get("type") == tool for t in attachment.get("tools") or []):
                found.setdefault(attachment["file_id"], None)
    return list(found)


def store_expires_at(row: Obj) -> int | None:
    """When a vector store row expires under its `expires_after` policy (None: never)."""
    expires_after = loads_or_none(row["expires_after"])
    if expires_after is None:
        return None
    return int(row["last_active_at"]) + int(expires_after["days"]) * DAY_SECONDS


def store_expired(row: Obj) -> bool:
    expires_at = store_expires_at(row)
    return expires_at is not None and expires_at <= now()


def vector_store_object(row: Obj, by_status: dict[str, int], usage_bytes: int) -> Obj:
    """`status` and `expires_at` follow from the files' states and the expiration policy."""
    expires_after = loads_or_none(row["expires_after"])
    expires_at = store_expires_at(row)
    counts = file_counts(by_status)
    status = "in_progress" if counts["in_progress"] else "completed"
    if store_expired(row):
        status = "expired"
    obj: Obj = {
        "id": row["id"],
        "object": "vector_store",
        "created_at": int(row["created_at"]),
        "name": row["name"],
        "usage_bytes": int(usage_bytes),
        "file_counts": counts,
        "status": status,
        "last_active_at": int(row["last_active_at"]),
        "expires_at": expires_at,
        "metadata": json.loads(row["metadata"]),
    }
    if expires_after is not None:
        obj["expires_after"] = expires_after
    return obj


def vector_store_file_object(row: Obj) -> Obj:
    return {
        "id": row["id"],
        "object": "vector_store.file",
        "usage_bytes": int(row["usage_bytes"]),
        "created_at": int(row["created_at"]),
        "vector_store_id": row["vector_store_id"],
        "status": row["status"],
        "last_error": loads_or_none(row["last_error"]),
        "chunking_strategy": json.loads(row["chunking_strategy"]),
        "attributes": loads_or_none(row["attributes"]) or {},
    }


def file_batch_object(row: Obj, by_status: dict[str, int]) -> Obj:
    counts = file_counts(by_status)
    if row["cancelled"]:
        status = "cancelled"
    elif counts["in_progress"]:
        status = "in_progress"
    elif counts["failed"] and counts["failed"] == counts["total"]:
        status = "failed"
    else:
        status = "completed"
    return {
        "id": row["id"],
        "object": "vector_store.files_batch",
        "created_at": int(row["created_at"]),
        "vector_store_id": row["vector_store_id"],
        "status": status,
        "file_counts": counts,
    }
