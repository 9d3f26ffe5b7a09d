"""The shapes of what a run is made of, as the API shows them: runs, steps, messages,
their parts, and the stream events that carry them.

TypedDicts rather than classes: these objects are JSON on the wire and in the database,
and the types let mypy check every key the lifecycle reads or writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict

# What code that only reads a run takes: a `Run`, or a plain dict shaped like one.
RunView = Mapping[str, Any]


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def no_usage() -> Usage:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def add_usage(a: Usage, b: Usage) -> Usage:
    return {
        "prompt_tokens": a["prompt_tokens"] + b["prompt_tokens"],
        "completion_tokens": a["completion_tokens"] + b["completion_tokens"],
        "total_tokens": a["total_tokens"] + b["total_tokens"],
    }


def usage_of(value: Any) -> Usage:
    """A stored or upstream usage object, whatever its gaps, as counts."""
    value = value or {}
    return {
        "prompt_tokens": int(value.get("prompt_tokens") or 0),
        "completion_tokens": int(value.get("completion_tokens") or 0),
        "total_tokens": int(value.get("total_tokens") or 0),
    }


class LastError(TypedDict):
    code: str
    message: str


class IncompleteDetails(TypedDict):
    reason: str


class Function(TypedDict):
    name: str
    arguments: str
    output: str | None


class FunctionCall(TypedDict):
    id: str
    type: Literal["function"]
    function: Function


class ActionFunction(TypedDict):
    name: str
    arguments: str


class ActionCall(TypedDict):
    id: str
    type: Literal["function"]
    function: ActionFunction


class ToolOutputsRequest(TypedDict):
    tool_calls: list[ActionCall]


class RequiredAction(TypedDict):
    type: Literal["submit_tool_outputs"]
    submit_tool_outputs: ToolOutputsRequest


class Run(TypedDict):
    id: str
    object: str
    created_at: int
    thread_id: str
    assistant_id: str
    status: str
    started_at: int | None
    expires_at: int | None
    cancelled_at: int | None
    failed_at: int | None
    completed_at: int | None
    required_action: RequiredAction | None
    last_error: LastError | None
    incomplete_details: IncompleteDetails | None
    usage: Usage | None
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    tool_choice: Any
    parallel_tool_calls: bool
    temperature: float | None
    top_p: float | None
    response_format: Any
    max_prompt_tokens: int | None
    max_completion_tokens: int | None
    truncation_strategy: dict[str, Any]
    metadata: dict[str, Any]


class RunRow(TypedDict):
    """A new run's row: its settings as JSON in `data`, the state in columns."""

    id: str
    thread_id: str
    assistant_id: str
    created_at: int
    status: str
    data: str
    metadata: str
    expires_at: int
    traceparent: NotRequired[str | None]


class Step(TypedDict):
    id: str
    object: str
    created_at: int
    assistant_id: str
    thread_id: str
    run_id: str
    type: str
    status: str
    cancelled_at: int | None
    completed_at: int | None
    expired_at: int | None
    failed_at: int | None
    last_error: LastError | None
    step_details: dict[str, Any]
    usage: Usage | None
    metadata: dict[str, Any]


class Message(TypedDict):
    id: str
    object: str
    created_at: int
    thread_id: str
    status: str
    incomplete_details: IncompleteDetails | None
    completed_at: int | None
    incomplete_at: int | None
    role: str
    content: list[dict[str, Any]]
    assistant_id: str | None
    run_id: str | None
    attachments: list[dict[str, Any]]
    metadata: dict[str, Any]
