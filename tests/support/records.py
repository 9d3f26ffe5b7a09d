"""Whole steps and messages for unit tests, as the database holds them: the helpers that read
a run's records take the records' types (lifecycle/records.py), so a test gives them every key."""

from __future__ import annotations

from typing import Any

from assistd.lifecycle.records import Message, Step


def step(details: dict[str, Any], *, status: str = "completed", step_id: str = "step_1") -> Step:
    """A step of run_1 with these `step_details` (its `type` is theirs)."""
    return {
        "id": step_id, "object": "thread.run.step", "created_at": 0, "assistant_id": "asst_1",
        "thread_id": "thread_1", "run_id": "run_1", "type": details["type"], "status": status,
        "cancelled_at": None, "completed_at": None, "expired_at": None, "failed_at": None,
        "last_error": None, "step_details": details, "usage": None, "metadata": {},
    }


def message(content: list[dict[str, Any]], *, status: str = "completed", role: str = "assistant",
            message_id: str = "msg_1", run_id: str | None = "run_1") -> Message:
    """A message of thread_1 with these content parts."""
    return {
        "id": message_id, "object": "thread.message", "created_at": 0, "thread_id": "thread_1",
        "status": status, "incomplete_details": None, "completed_at": None, "incomplete_at": None,
        "role": role, "content": content, "assistant_id": "asst_1" if role == "assistant" else None,
        "run_id": run_id, "attachments": [], "metadata": {},
    }
