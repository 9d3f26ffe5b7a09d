"""Building the upstream request: history, truncation, budgets, tools."""

from __future__ import annotations

from typing import Any

import pytest

from assistd.domain.objects import text_part
from assistd.execution import prompt
from assistd.lifecycle.records import Message
from tests.support import records

RUN: dict[str, Any] = {
    "id": "run_1", "model": "m", "instructions": "sys", "tools": [], "tool_choice": "auto",
    "parallel_tool_calls": True, "temperature": 1.0, "top_p": 1.0, "response_format": "auto",
    "truncation_strategy": {"type": "auto", "last_messages": None},
}


def _user(number: int, text: str) -> Message:
    return records.message([text_part(text)], role="user", message_id=f"msg_{number}", run_id=None)


def _history(n: int, size: int = 10) -> list[Message]:
    return [_user(i, f"{i}:" + "x" * size) for i in range(n)]


def test_last_messages_keeps_only_the_most_recent_thread_messages() -> None:
    run = {**RUN, "truncation_strategy": {"type": "last_messages", "last_messages": 2}}
    thread, own = prompt.conversation(run, _history(5), [], [])
    messages = prompt.truncate(run, prompt.system_messages(run), thread, own, None)
    assert [m["content"][:2] for m in messages[1:]] == ["3:", "4:"]
    assert messages[0] == {"role": "system", "content": "sys"}


def test_auto_truncation_drops_the_oldest_until_the_prompt_fits() -> None:
    thread, own = prompt.conversation(RUN, _history(10, size=400), [], [])
    messages = prompt.truncate(RUN, [], thread, own, prompt_budget=350)
    assert prompt.estimate_tokens(messages) <= 350
    assert messages[-1]["content"].startswith("9:") and len(messages) < 10


def _dropping_one_by_one(thread: list[dict[str, Any]], own: list[dict[str, Any]], budget: int) -> int:
    """What auto truncation means, measured the slow way: re-estimate after each drop."""
    dropped = 0
    while len(thread) - dropped > 1 and prompt.estimate_tokens(thread[dropped:] + own) > budget:
        dropped += 1
    return dropped


@pytest.mark.parametrize("budget", [0, 50, 200, 351, 900, 2_000, 10**6])
def test_auto_truncation_keeps_what_re_estimating_after_each_drop_would(budget: int) -> None:
    sizes = [3, 700, 40, 1_200, 5, 90, 333, 8, 2_500, 60]
    history = [_user(i, "y" * n) for i, n in enumerate(sizes)]
    thread, own = prompt.conversation(RUN, history, [], [])
    own = [{"role": "assistant", "content": "z" * 150}]
    expected = thread[_dropping_one_by_one(thread, own, budget):] + own
    try:
        assert prompt.truncate(RUN, [], thread, own, budget) == expected
    except prompt.PromptTooLong:
        assert prompt.estimate_tokens(expected) > budget


def test_the_estimate_of_a_list_is_its_json_length_in_quarters() -> None:
    import json

    history = [_user(i, "é" * n) for i, n in enumerate((0, 1, 77))]
    thread, _ = prompt.conversation(RUN, history, [], [])
    for count in range(len(thread) + 1):
        chars = len(json.dumps(thread[:count], ensure_ascii=False))
        assert prompt.estimate_tokens(thread[:count]) == chars // 4 + 1


def test_a_prompt_that_cannot_fit_is_refused() -> None:
    thread, own = prompt.conversation(RUN, _history(1, size=4000), [], [])
    with pytest.raises(prompt.PromptTooLong):
        prompt.truncate(RUN, [], thread, own, prompt_budget=256)


def test_request_without_function_tools_sends_no_tool_fields() -> None:
    run = {**RUN, "tools": [{"type": "code_interpreter"}]}
    request = prompt.build_request(run, [], None, "max_completion_tokens")
    assert "tools" not in request and "tool_choice" not in request
    assert request["stream_options"] == {"include_usage": True}


def test_request_carries_tools_format_and_budget() -> None:
    fn = {"name": "f", "parameters": {"type": "object"}}
    run = {**RUN, "tools": [{"type": "function", "function": fn}], "tool_choice": "required",
           "parallel_tool_calls": False, "response_format": {"type": "json_object"}}
    request = prompt.build_request(run, [], 300, "max_tokens")
    assert request["tools"] == [{"type": "function", "function": fn}]
    assert (request["tool_choice"], request["parallel_tool_calls"]) == ("required", False)
    assert request["response_format"] == {"type": "json_object"} and request["max_tokens"] == 300


def test_earlier_tool_steps_become_assistant_tool_calls_and_tool_results() -> None:
    step = records.step({"type": "tool_calls", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}", "output": "42"}},
    ]})
    assistant, result = prompt.step_messages(step, {})
    assert assistant["tool_calls"][0]["id"] == "call_1" and assistant["content"] is None
    assert result == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
