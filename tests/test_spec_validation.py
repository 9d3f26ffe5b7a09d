"""tests/support/spec.py: valid objects pass, broken ones fail, the 3.0→2020-12 rewrite is right."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.support.spec import (
    ASSISTANTS_SCHEMAS,
    assert_matches_schema,
    schema,
    schema_errors,
    schema_names,
    to_json_schema,
)

Obj = dict[str, Any]
NOW = 1_700_000_000

RUN: Obj = {
    "id": "run_abc", "object": "thread.run", "created_at": NOW, "thread_id": "thread_abc",
    "assistant_id": "asst_abc", "status": "queued", "required_action": None, "last_error": None,
    "expires_at": NOW + 600, "started_at": None, "cancelled_at": None, "failed_at": None,
    "completed_at": None, "model": "gpt-4o", "instructions": "Be brief.",
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "metadata": {}, "usage": None, "incomplete_details": None, "temperature": 1.0, "top_p": 1.0,
    "max_prompt_tokens": None, "max_completion_tokens": None,
    "truncation_strategy": {"type": "auto", "last_messages": None}, "tool_choice": "auto",
    "parallel_tool_calls": True, "response_format": "auto",
}
USAGE: Obj = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
TEXT: Obj = {"type": "text", "text": {"value": "Hi!", "annotations": []}}
MESSAGE: Obj = {
    "id": "msg_abc", "object": "thread.message", "created_at": NOW, "thread_id": "thread_abc",
    "status": "completed", "incomplete_details": None, "completed_at": NOW, "incomplete_at": None,
    "role": "assistant", "content": [TEXT], "assistant_id": "asst_abc", "run_id": "run_abc",
    "attachments": [], "metadata": {},
}
STEP: Obj = {
    "id": "step_abc", "object": "thread.run.step", "created_at": NOW, "assistant_id": "asst_abc",
    "thread_id": "thread_abc", "run_id": "run_abc", "type": "message_creation", "status": "completed",
    "step_details": {"type": "message_creation", "message_creation": {"message_id": "msg_abc"}},
    "last_error": None, "expired_at": None, "cancelled_at": None, "failed_at": None,
    "completed_at": NOW, "metadata": {}, "usage": USAGE,
}
ASSISTANT: Obj = {
    "id": "asst_abc", "object": "assistant", "created_at": NOW, "name": None, "description": None,
    "model": "gpt-4o", "instructions": None, "tools": [], "tool_resources": None, "metadata": {},
    "temperature": None, "top_p": None, "response_format": "auto",
}
THREAD: Obj = {"id": "thread_abc", "object": "thread", "created_at": NOW, "tool_resources": None, "metadata": {}}


def run(**changes: Any) -> Obj:
    return {**copy.deepcopy(RUN), **changes}


def page(*items: Obj) -> Obj:
    return {"object": "list", "data": list(items), "first_id": items[0]["id"], "last_id": items[-1]["id"],
            "has_more": False}


def test_every_assistants_schema_is_in_the_spec() -> None:
    names = set(schema_names())
    assert set(ASSISTANTS_SCHEMAS) <= names


def test_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        assert_matches_schema({}, "RunObjekt")


# ------------------------------------------------------------------ runs


@pytest.mark.parametrize("changes", [
    {},
    {"status": "in_progress", "started_at": NOW},
    {"status": "requires_action", "started_at": NOW, "required_action": {
        "type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        ]}}},
    {"status": "cancelling"},
    {"status": "cancelled", "cancelled_at": NOW, "expires_at": None},
    {"status": "failed", "failed_at": NOW, "expires_at": None,
     "last_error": {"code": "rate_limit_exceeded", "message": "slow down"}},
    {"status": "completed", "completed_at": NOW, "expires_at": None, "usage": USAGE},
    {"status": "incomplete", "incomplete_details": {"reason": "max_completion_tokens"}, "usage": USAGE},
    {"status": "expired", "expires_at": NOW},
    # The spec writes these as `allOf: [{$ref}, {nullable: true}]`: null must pass.
    {"tool_choice": None, "truncation_strategy": None, "response_format": None},
    {"tool_choice": {"type": "function", "function": {"name": "get_weather"}},
     "truncation_strategy": {"type": "last_messages", "last_messages": 5}},
    {"metadata": None, "temperature": None, "top_p": None, "max_prompt_tokens": 1000},
    {"extra_field_from_a_newer_api": 1},
])
def test_valid_runs_pass(changes: Obj) -> None:
    assert_matches_schema(run(**changes), "RunObject")


@pytest.mark.parametrize(("broken", "where"), [
    ({"status": "bogus"}, "status"),
    ({"status": None}, "status"),
    ({"object": "thread.runs"}, "object"),
    ({"created_at": "yesterday"}, "created_at"),
    ({"last_error": {"code": "oops", "message": "x"}}, "last_error"),
    ({"required_action": {"type": "submit_tool_outputs"}}, "required_action"),
    ({"usage": {"prompt_tokens": 1}}, "usage"),
    ({"tools": [{"type": "browser"}]}, "tools"),
    ({"metadata": {"key": 1}}, "metadata"),
])
def test_invalid_runs_fail(broken: Obj, where: str) -> None:
    with pytest.raises(AssertionError, match=where):
        assert_matches_schema(run(**broken), "RunObject")


def test_a_run_missing_status_fails() -> None:
    missing = run()
    del missing["status"]
    with pytest.raises(AssertionError, match="'status' is a required property"):
        assert_matches_schema(missing, "RunObject")


def test_sdk_models_are_checked_as_sent() -> None:
    from openai.types.beta.threads import Run

    assert_matches_schema(Run(**run()), "RunObject")
    with pytest.raises(AssertionError):
        assert_matches_schema(Run.model_construct(**{**run(), "status": "bogus"}), "RunObject")


# ------------------------------------------------------------------ the other objects


@pytest.mark.parametrize(("obj", "name"), [
    (ASSISTANT, "AssistantObject"),
    (page(ASSISTANT), "ListAssistantsResponse"),
    ({"id": "asst_abc", "object": "assistant.deleted", "deleted": True}, "DeleteAssistantResponse"),
    (THREAD, "ThreadObject"),
    ({"id": "thread_abc", "object": "thread.deleted", "deleted": True}, "DeleteThreadResponse"),
    (MESSAGE, "MessageObject"),
    ({**MESSAGE, "status": "incomplete", "incomplete_details": {"reason": "run_cancelled"},
      "completed_at": None, "incomplete_at": NOW}, "MessageObject"),
    ({**MESSAGE, "role": "user", "assistant_id": None, "run_id": None}, "MessageObject"),
    (page(MESSAGE), "ListMessagesResponse"),
    ({"id": "msg_abc", "object": "thread.message.deleted", "deleted": True}, "DeleteMessageResponse"),
    ({"id": "msg_abc", "object": "thread.message.delta",
      "delta": {"content": [{"index": 0, "type": "text", "text": {"value": "Hi"}}]}}, "MessageDeltaObject"),
    (page(run()), "ListRunsResponse"),
    (STEP, "RunStepObject"),
    ({**STEP, "type": "tool_calls", "status": "in_progress", "completed_at": None, "usage": None,
      "step_details": {"type": "tool_calls", "tool_calls": [{"id": "call_1", "type": "function", "function": {
          "name": "get_weather", "arguments": "{}", "output": None}}]}}, "RunStepObject"),
    (page(STEP), "ListRunStepsResponse"),
    ({"id": "step_abc", "object": "thread.run.step.delta", "delta": {"step_details": {
        "type": "tool_calls", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                               "function": {"name": "get_weather", "arguments": ""}}]}}},
     "RunStepDeltaObject"),
])
def test_valid_objects_pass(obj: Obj, name: str) -> None:
    assert_matches_schema(obj, name)


@pytest.mark.parametrize(("obj", "name"), [
    ({**THREAD, "object": "threads"}, "ThreadObject"),
    ({**MESSAGE, "status": "done"}, "MessageObject"),
    ({**MESSAGE, "content": [{"type": "text", "text": "Hi!"}]}, "MessageObject"),
    ({**STEP, "step_details": {"type": "message_creation"}}, "RunStepObject"),
    ({"id": "asst_abc", "object": "assistant.deleted"}, "DeleteAssistantResponse"),
    ({"object": "list", "data": [{**ASSISTANT, "tools": None}], "first_id": "a", "last_id": "a",
      "has_more": False}, "ListAssistantsResponse"),
])
def test_invalid_objects_fail(obj: Obj, name: str) -> None:
    with pytest.raises(AssertionError):
        assert_matches_schema(obj, name)


# ------------------------------------------------------------------ the spec's own examples

# The examples in x-oaiMeta lag behind their schemas; these are the only differences there may be.
EXAMPLE_DRIFT = {
    "ThreadObject": {"(root): 'tool_resources' is a required property"},
    "MessageObject": {"(root): 'status' is a required property",
                      "(root): 'incomplete_details' is a required property",
                      "(root): 'completed_at' is a required property",
                      "(root): 'incomplete_at' is a required property"},
    "RunObject": {"(root): 'required_action' is a required property",
                  "instructions: None is not of type 'string'"},
    "RunStepObject": {"(root): 'metadata' is a required property"},
}


def test_examples_in_the_spec_pass_but_for_known_drift() -> None:
    checked = []
    for name in ASSISTANTS_SCHEMAS:
        example = schema(name).get("x-oaiMeta", {}).get("example")
        if example:
            assert set(schema_errors(json.loads(example), name)) <= EXAMPLE_DRIFT.get(name, set()), name
            checked.append(name)
    assert len(checked) >= 8  # most of them have one: this is not checking nothing


# ------------------------------------------------------------------ the rewrite itself


def test_nullable_scalar_and_enum_gain_null() -> None:
    converted = to_json_schema({"type": "string", "enum": ["a", "b"], "nullable": True})
    assert converted == {"type": ["string", "null"], "enum": ["a", "b", None]}


def test_nullable_ref_becomes_an_alternative() -> None:
    converted = to_json_schema({"$ref": "#/x", "nullable": True, "description": "d"})
    assert converted == {"anyOf": [{"$ref": "#/x"}, {"type": "null"}], "description": "d"}


def test_all_of_with_a_bare_nullable_member_is_a_nullable_ref() -> None:
    converted = to_json_schema({"allOf": [{"$ref": "#/x"}, {"nullable": True}]})
    assert converted == {"anyOf": [{"allOf": [{"$ref": "#/x"}]}, {"type": "null"}]}


def test_only_schema_positions_are_rewritten() -> None:
    source = {"type": "object",
              "properties": {"nullable": {"type": "boolean"}, "type": {"type": "string", "nullable": True}},
              "example": {"nullable": True}, "default": {"nullable": True}}
    converted = to_json_schema(source)
    assert converted["properties"]["nullable"] == {"type": "boolean"}
    assert converted["properties"]["type"] == {"type": ["string", "null"]}
    assert converted["example"] == {"nullable": True} and converted["default"] == {"nullable": True}


def test_openapi_30_exclusive_bounds() -> None:
    assert to_json_schema({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number", "exclusiveMinimum": 0}
    assert to_json_schema({"type": "number", "maximum": 1, "exclusiveMaximum": False}) == {
        "type": "number", "maximum": 1}
