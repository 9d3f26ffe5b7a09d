"""A new run and its extra messages, from the API's parameters (the status changes
themselves are in lifecycle/changes.py)."""

from __future__ import annotations

from typing import Any, cast

from assistd.domain import objects as o
from assistd.execution.runtime import Runtime
from assistd.lifecycle.records import RunRow
from assistd.observability import tracing

Obj = dict[str, Any]


def message_from_params(thread_id: str, params: Obj) -> Obj:
    return o.new_message(
        thread_id,
        params["role"],
        o.content_parts(params["content"]),
        attachments=params.get("attachments"),
        metadata=params.get("metadata"),
    )


def new_run(rt: Runtime, thread_id: str, assistant: Obj, params: Obj) -> tuple[RunRow, list[Obj]]:
    row = cast(RunRow, o.new_run_row(thread_id, assistant, params, rt.settings.run_expires_seconds))
    row["traceparent"] = tracing.current_traceparent()  # the run's spans join this request's trace
    extra = [message_from_params(thread_id, m) for m in params.get("additional_messages") or []]
    return row, extra
