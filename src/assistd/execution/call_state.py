"""What one upstream call of a turn has produced so far: its message and text, its tool
calls, its usage and how it finished. Pure bookkeeping; the turn (executor.py) does the I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from assistd.domain.ids import new_id
from assistd.execution import code_tool, file_search
from assistd.execution.message_parts import StreamedText
from assistd.execution.prompt import estimate_text_tokens
from assistd.lifecycle.outcome import CallFacts
from assistd.lifecycle.records import ActionCall, Message, RequiredAction, Step, Usage

Obj = dict[str, Any]


@dataclass
class CallState:
    searching: bool = False  # the model is offered file_search in this call
    coding: bool = False  # the model is offered code_interpreter in this call
    prompt_estimate: int = 0
    message: Message | None = None
    message_step: Step | None = None
    tool_step: Step | None = None
    calls: dict[int, Obj] = field(default_factory=dict)  # by the upstream's call index
    code_inputs: dict[int, code_tool.InputStream] = field(default_factory=dict)
    images: list[Obj] = field(default_factory=list)  # the message's image_file parts, before its text
    streamed: StreamedText | None = None  # the message's text part, as sent
    usage: Usage | None = None  # as the upstream reported it
    finish_reason: str | None = None

    @property
    def wrote_anything(self) -> bool:
        return self.message is not None or self.tool_step is not None

    # ------------------------------------------------------------ tool calls

    def add_call_piece(self, index: int, name: str, arguments: str) -> tuple[Obj, bool]:
        """Append a streamed piece to call `index`; returns the call and whether it is new."""
        first = index not in self.calls
        call = self.calls.setdefault(index, {
            "id": new_id("call"), "type": "function",
            "function": {"name": "", "arguments": "", "output": None},
        })
        call["function"]["name"] += name
        call["function"]["arguments"] += arguments
        return call, first

    def is_search(self, call: Obj) -> bool:
        return self.searching and call["type"] == "function" and call["function"]["name"] == file_search.NAME

    def is_code(self, call: Obj) -> bool:
        return self.coding and call["type"] == "function" and call["function"]["name"] == code_tool.NAME

    def ordered_calls(self) -> list[Obj]:
        return [self.calls[i] for i in sorted(self.calls)]

    def required_action(self) -> RequiredAction:
        calls: list[ActionCall] = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
            for c in self.ordered_calls() if c["type"] == "function"
        ]
        return {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}}

    # ------------------------------------------------------------ text

    def sync_text(self) -> None:
        """Bring the message's content up to what was streamed."""
        if self.message is not None:
            text = [self.streamed.part()] if self.streamed is not None else []
            self.message["content"] = [*self.images, *text]

    # ------------------------------------------------------------ the end

    def turn_usage(self) -> Usage:
        """The upstream's usage, or the estimate (prompt as sent, completion as received)."""
        if self.usage is not None:
            return self.usage
        chars = len(self.streamed.value) if self.streamed is not None else 0
        chars += sum(len(c["function"]["arguments"]) for c in self.calls.values() if c["type"] == "function")
        completion = estimate_text_tokens(chars)
        return {"prompt_tokens": self.prompt_estimate, "completion_tokens": completion,
                "total_tokens": self.prompt_estimate + completion}

    def facts(self, used: Usage, max_prompt_tokens: int | None) -> CallFacts:
        served = sum(1 for c in self.calls.values() if self.is_search(c) or self.is_code(c))
        return CallFacts(self.finish_reason, len(self.calls), served, used, self.turn_usage(), max_prompt_tokens)
