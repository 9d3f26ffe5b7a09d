"""Build the upstream Chat Completions request for one step of a run."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from assistd.domain.objects import message_text
from assistd.execution import code_tool, file_search
from assistd.lifecycle.records import Message, RunView, Step

Obj = dict[str, Any]


class PromptTooLong(Exception):
    """Even the shortest prompt exceeds the run's `max_prompt_tokens` budget."""


IMAGE_TOKENS = 765  # what OpenAI counts for a 1024x1024 image in detail: a guess, for budgets


CHARS_PER_TOKEN = 4  # the one rule assistd estimates tokens by, without a tokenizer


def estimate_text_tokens(chars: int) -> int:
    """Tokens in `chars` characters of text (a completion whose upstream sent no usage)."""
    return chars // CHARS_PER_TOKEN


def _size(message: Obj) -> tuple[int, int]:
    """(characters of the message as JSON without its images, images it carries)."""
    content = message.get("content")
    if not isinstance(content, list):
        return len(json.dumps(message, ensure_ascii=False)), 0
    images = sum(1 for p in content if p.get("type") == "image_url")
    plain = {**message, "content": [p for p in content if p.get("type") != "image_url"]}
    return len(json.dumps(plain, ensure_ascii=False)), images


def _estimate(chars: int, count: int, images: int) -> int:
    """The estimate for `count` messages of `chars` characters in all, as one JSON list
    ("[", the messages joined by ", ", "]"), each image counting IMAGE_TOKENS."""
    listed = chars + 2 + 2 * max(count - 1, 0)
    return estimate_text_tokens(listed) + 1 + images * IMAGE_TOKENS


def estimate_tokens(messages: list[Obj]) -> int:
    """A tokenizer-free estimate of a prompt, used only for budgets; an image counts
    IMAGE_TOKENS, however long its `data:` URL."""
    sizes = [_size(m) for m in messages]
    return _estimate(sum(c for c, _ in sizes), len(sizes), sum(i for _, i in sizes))


def chat_message(message: Message, images: Mapping[str, str] | None = None) -> Obj:
    """A thread message as a Chat Completions message. A user's images become `image_url`
    parts, in place: a URL as given, an `image_file` as its `data:` URL from `images`
    (file id → URL; a file missing there is left out)."""
    text = message_text(message)
    seen = [p for p in message["content"] if p["type"] in ("image_url", "image_file")]
    if not seen or message["role"] != "user":
        return {"role": message["role"], "content": text}
    parts: list[Obj] = []
    for part in message["content"]:
        if part["type"] == "text" and part["text"]["value"]:
            parts.append({"type": "text", "text": part["text"]["value"]})
        elif (image := _image_url(part, images or {})) is not None:
            parts.append({"type": "image_url", "image_url": image})
    return {"role": "user", "content": parts or text}


def _image_url(part: Obj, images: Mapping[str, str]) -> Obj | None:
    if part["type"] == "image_url":
        return dict(part["image_url"])
    if part["type"] != "image_file" or part["image_file"]["file_id"] not in images:
        return None
    image = {"url": images[part["image_file"]["file_id"]]}
    if part["image_file"].get("detail"):
        image["detail"] = part["image_file"]["detail"]
    return image


def step_messages(step: Step, messages_by_id: Mapping[str, Message]) -> list[Obj]:
    """What one of this run's earlier steps contributes to the conversation."""
    details = step["step_details"]
    if details["type"] == "message_creation":
        message = messages_by_id.get(details["message_creation"]["message_id"])
        return [chat_message(message)] if message and message_text(message) else []
    calls = [c for c in details["tool_calls"] if c["type"] in ("function", file_search.NAME, code_tool.NAME)]
    if not calls:
        return []
    assistant = {"role": "assistant", "content": None, "tool_calls": [_chat_call(c) for c in calls]}
    results = [{"role": "tool", "tool_call_id": c["id"], "content": _tool_output(c)} for c in calls]
    return [assistant, *results]


def _chat_call(call: Obj) -> Obj:
    if call["type"] == file_search.NAME:
        return file_search.chat_call(call)
    if call["type"] == code_tool.NAME:
        return code_tool.chat_call(call)
    function = call["function"]
    return {"id": call["id"], "type": "function",
            "function": {"name": function["name"], "arguments": function["arguments"]}}


def _tool_output(call: Obj) -> str:
    if call["type"] == file_search.NAME:
        return file_search.tool_output(call)
    if call["type"] == code_tool.NAME:
        return code_tool.tool_output(call)
    return str(call["function"].get("output") or "")


def conversation(run: RunView, history: Sequence[Message], steps: Sequence[Step], run_messages: Sequence[Message],
                 images: Mapping[str, str] | None = None) -> tuple[list[Obj], list[Obj]]:
    """(thread history, this run's own turns) as chat messages, before truncation; `images`
    holds the `data:` URLs of the files `image_file` parts name."""
    thread = [chat_message(m, images) for m in history if m["run_id"] != run["id"]]
    by_id = {m["id"]: m for m in run_messages}
    own = [msg for step in steps for msg in step_messages(step, by_id)]
    return thread, own


def truncate(run: RunView, system: list[Obj], thread: list[Obj], own: list[Obj], prompt_budget: int | None) -> list[Obj]:
    """Apply `truncation_strategy`: keep the last N thread messages, or drop the oldest to fit."""
    strategy = run.get("truncation_strategy") or {"type": "auto"}
    if strategy.get("type") == "last_messages" and strategy.get("last_messages") is not None:
        n = int(strategy["last_messages"])
        thread = thread[-n:] if n > 0 else []
    if prompt_budget is not None and strategy.get("type") == "auto":
        thread = thread[_oldest_kept(system + own, thread, prompt_budget):]
    messages = system + thread + own
    if prompt_budget is not None and estimate_tokens(messages) > prompt_budget:
        raise PromptTooLong()
    return messages


def _oldest_kept(kept: list[Obj], thread: list[Obj], budget: int) -> int:
    """How many of the oldest thread messages to drop (keeping at least one) for the prompt
    to fit `budget`: each message is measured once, so this is linear in the prompt."""
    sizes = [_size(m) for m in [*kept, *thread]]
    chars, count, images = sum(c for c, _ in sizes), len(sizes), sum(i for _, i in sizes)
    dropped = 0
    for chars_of, images_of in sizes[len(kept):-1]:
        if _estimate(chars, count, images) <= budget:
            break
        chars, count, images, dropped = chars - chars_of, count - 1, images - images_of, dropped + 1
    return dropped


def function_tools(run: RunView, served: list[Obj] | None = None) -> list[Obj]:
    """The run's function tools, and the functions standing for the tools assistd answers
    itself (`file_search`, `code_interpreter`) while it offers them."""
    tools = [
        {"type": "function", "function": t["function"]}
        for t in run.get("tools") or []
        if t.get("type") == "function"
    ]
    return [*tools, *(served or [])]


def tool_choice(run: RunView, served: list[Obj] | None = None) -> Any:
    """The run's `tool_choice`; `{"type": "file_search"}` (or code_interpreter) becomes the
    function that stands for it while offered, else `auto`."""
    choice = run.get("tool_choice") or "auto"
    if isinstance(choice, dict) and choice.get("type") in (file_search.NAME, code_tool.NAME):
        offered = {t["function"]["name"] for t in served or []}
        name = choice["type"]
        return {"type": "function", "function": {"name": name}} if name in offered else "auto"
    return choice


def response_format(run: RunView) -> Obj | None:
    fmt = run.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return fmt
    return None


def build_request(run: RunView, messages: list[Obj], completion_budget: int | None, max_tokens_param: str,
                  served: list[Obj] | None = None) -> Obj:
    request: Obj = {
        "model": run["model"],
        "messages": messages,
        "stream_options": {"include_usage": True},
    }
    for key in ("temperature", "top_p"):
        if run.get(key) is not None:
            request[key] = run[key]
    tools = function_tools(run, served)
    if tools:
        request["tools"] = tools
        request["tool_choice"] = tool_choice(run, served)
        request["parallel_tool_calls"] = bool(run.get("parallel_tool_calls", True))
    if (fmt := response_format(run)) is not None:
        request["response_format"] = fmt
    if completion_budget is not None:
        request[max_tokens_param] = completion_budget
    return request


def system_messages(run: RunView) -> list[Obj]:
    instructions = run.get("instructions")
    return [{"role": "system", "content": instructions}] if instructions else []
