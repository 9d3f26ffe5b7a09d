"""How an upstream call ends the run, decided from facts alone (lifecycle/outcome.py)."""

from __future__ import annotations

import pytest

from assistd.lifecycle.outcome import CallFacts, Next, budgets, decide
from assistd.lifecycle.records import Usage, no_usage

CALL: Usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}


def facts(finish: str = "stop", calls: int = 0, served: int = 0, max_prompt: int | None = None,
          used: Usage | None = None) -> CallFacts:
    return CallFacts(finish, calls, served, used or no_usage(), CALL, max_prompt)


@pytest.mark.parametrize(("case", "expected"), [
    (facts(), (Next.COMPLETED, None, False)),
    (facts("tool_calls", calls=2), (Next.REQUIRES_ACTION, None, False)),
    (facts("tool_calls", calls=2, served=1), (Next.REQUIRES_ACTION, None, False)),
    (facts("tool_calls", calls=2, served=2), (Next.CALL_AGAIN, None, False)),
    (facts("length"), (Next.INCOMPLETE, "max_completion_tokens", True)),
    (facts("length", calls=1), (Next.INCOMPLETE, "max_completion_tokens", True)),
    (facts(max_prompt=99), (Next.INCOMPLETE, "max_prompt_tokens", False)),
    (facts(max_prompt=100), (Next.COMPLETED, None, False)),
    (facts("tool_calls", calls=1, served=1, max_prompt=150,
           used={"prompt_tokens": 60, "completion_tokens": 0, "total_tokens": 60}),
     (Next.INCOMPLETE, "max_prompt_tokens", False)),
])
def test_a_calls_facts_decide_what_follows(case: CallFacts, expected: tuple[Next, str | None, bool]) -> None:
    outcome = decide(case)
    assert (outcome.next, outcome.reason, outcome.truncated) == expected


def test_calls_are_answered_only_when_they_are_kept() -> None:
    assert decide(facts("tool_calls", calls=1)).answers_calls
    assert decide(facts("tool_calls", calls=1, served=1)).answers_calls
    assert not decide(facts("length", calls=1)).answers_calls


def test_a_spent_completion_budget_forbids_another_call() -> None:
    used: Usage = {"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60}
    assert budgets(None, 50, used).exhausted == "max_completion_tokens"
    left = budgets(100, 51, used)
    assert left.exhausted is None and (left.prompt_left, left.completion_left) == (90, 1)
    assert budgets(None, None, used).exhausted is None
