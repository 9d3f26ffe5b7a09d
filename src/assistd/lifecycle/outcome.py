"""How a turn's upstream call ends the run, decided from facts alone (no I/O): the finish
reason, the calls the model made, and the token budgets."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from assistd.lifecycle.records import Usage


class Next(StrEnum):
    CALL_AGAIN = "call_again"  # every call is one assistd answers itself: call the model again
    REQUIRES_ACTION = "requires_action"  # the client must submit tool outputs
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class Outcome:
    next: Next
    reason: str | None = None  # `incomplete_details.reason` for INCOMPLETE
    truncated: bool = False  # the message was cut short by the completion's length

    @property
    def answers_calls(self) -> bool:
        """The calls assistd serves are run now (file_search, code_interpreter)."""
        return self.next in (Next.CALL_AGAIN, Next.REQUIRES_ACTION)


@dataclass(frozen=True)
class CallFacts:
    finish_reason: str | None
    calls: int  # tool calls the model made in this call
    served_calls: int  # of which assistd answers itself
    used: Usage  # the run's usage before this call
    usage: Usage  # this call's
    max_prompt_tokens: int | None


def decide(facts: CallFacts) -> Outcome:
    """What follows an upstream call that finished: a cut-off completion or a prompt over
    budget ends the run `incomplete` (calls are dropped), calls go to whoever answers them,
    and otherwise the run is complete."""
    length = facts.finish_reason == "length"
    prompt_total = facts.used["prompt_tokens"] + facts.usage["prompt_tokens"]
    over_prompt = facts.max_prompt_tokens is not None and prompt_total > facts.max_prompt_tokens
    if facts.calls and not length and not over_prompt:
        if facts.served_calls == facts.calls:
            return Outcome(Next.CALL_AGAIN)
        return Outcome(Next.REQUIRES_ACTION)
    if length:
        return Outcome(Next.INCOMPLETE, "max_completion_tokens", truncated=True)
    if over_prompt:
        return Outcome(Next.INCOMPLETE, "max_prompt_tokens")
    return Outcome(Next.COMPLETED)


@dataclass(frozen=True)
class Budgets:
    prompt_left: int | None
    completion_left: int | None

    @property
    def exhausted(self) -> str | None:
        """The `incomplete_details.reason` that forbids another call, if any."""
        if self.completion_left is not None and self.completion_left <= 0:
            return "max_completion_tokens"
        return None


def budgets(max_prompt_tokens: int | None, max_completion_tokens: int | None, used: Usage) -> Budgets:
    """What is left of the run's token budgets after `used`."""
    return Budgets(
        None if max_prompt_tokens is None else max_prompt_tokens - used["prompt_tokens"],
        None if max_completion_tokens is None else max_completion_tokens - used["completion_tokens"],
    )
