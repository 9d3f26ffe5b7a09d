"""Server-Sent Events: names, order, framing, and the SDK's helpers on top of them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
from openai import AssistantEventHandler
from typing_extensions import override

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant
from tests.support.spec import assert_matches_schema

TEXT_RUN_EVENTS = [
    "thread.run.created", "thread.run.queued", "thread.run.in_progress",
    "thread.run.step.created", "thread.run.step.in_progress",
    "thread.message.created", "thread.message.in_progress",
]
TEXT_RUN_END = ["thread.message.completed", "thread.run.step.completed", "thread.run.completed"]


class Collector(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.events: list[str] = []

    @override
    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    @override
    def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.text += delta.value


def test_event_handler_receives_every_event_in_order(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("stream me", Reply.text("One two three four."))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream me"}])
    handler = Collector()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id, event_handler=handler) as stream:
        stream.until_done()
    assert handler.text == "One two three four."
    # The SDK's snapshot (message.created plus every delta) must not count a piece twice.
    snapshot = handler.get_final_messages()[0].content[0]
    assert snapshot.type == "text" and snapshot.text.value == "One two three four."
    deltas = handler.events.count("thread.message.delta")
    assert deltas >= 2
    assert handler.events == TEXT_RUN_EVENTS + ["thread.message.delta"] * deltas + TEXT_RUN_END
    run = handler.get_final_run()
    assert run.status == "completed"
    assert_matches_schema(run, "RunObject")


def test_raw_stream_is_sse_framed_and_ends_with_done(server: Any, upstream: FakeUpstream) -> None:
    upstream.on("raw frames", Reply.text("raw answer"))
    client = server.client()
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "raw frames"}])
    with httpx.stream(
        "POST", f"{server.base_url}/threads/{thread.id}/runs",
        json={"assistant_id": asst.id, "stream": True},
        headers={"OpenAI-Beta": "assistants=v2", "Authorization": "Bearer test"}, timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = [f for f in raw.split("\n\n") if f]
    parsed = [dict(line.split(": ", 1) for line in f.split("\n")) for f in frames]
    assert parsed[-1] == {"event": "done", "data": "[DONE]"}
    for frame in parsed[:-1]:
        data = json.loads(frame["data"])
        if frame["event"] == "thread.message.delta":
            assert_matches_schema(data, "MessageDeltaObject")
        elif frame["event"].startswith("thread.run.step."):
            assert_matches_schema(data, "RunStepObject")
        elif frame["event"].startswith("thread.message."):
            assert_matches_schema(data, "MessageObject")
        elif frame["event"].startswith("thread.run."):
            assert_matches_schema(data, "RunObject")
    deltas = [json.loads(f["data"])["delta"]["content"][0]["text"]["value"] for f in parsed if f["event"] == "thread.message.delta"]
    assert "".join(deltas) == "raw answer"


def test_create_thread_and_run_stream_starts_with_thread_created(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("new thread stream", Reply.text("hi"))
    asst = assistant(client)
    handler = Collector()
    with client.beta.threads.create_and_run_stream(
        assistant_id=asst.id, thread={"messages": [{"role": "user", "content": "new thread stream"}]},
        event_handler=handler,
    ) as stream:
        stream.until_done()
    assert handler.events[0] == "thread.created" and handler.events[1] == "thread.run.created"
    assert handler.text == "hi"


def test_tool_call_arguments_stream_as_step_deltas(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("stream tool args", Reply.tool_calls([("lookup", '{"query": "long argument text"}')]))
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    asst = assistant(client, tools=[tool])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream tool args"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        events = [e.event for e in stream]
        run = stream.get_final_run()
    assert events[-1] == "thread.run.requires_action"
    assert "thread.run.step.delta" in events
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    assert call.function.arguments == '{"query": "long argument text"}' and call.function.name == "lookup"
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


async def _async_stream(server: Any) -> tuple[str, str]:
    client = server.async_client()
    asst = await client.beta.assistants.create(model="fake-model")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "async stream"}])
    text = ""
    async with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        async for delta in stream.text_deltas:
            text += delta
        run = await stream.get_final_run()
    await client.close()
    return text, run.status


def test_async_client_streams_a_run(server: Any, upstream: FakeUpstream) -> None:
    upstream.on("async stream", Reply.text("Async works fine."))
    text, status = asyncio.run(_async_stream(server))
    assert (text, status) == ("Async works fine.", "completed")


def test_failed_run_stream_ends_with_thread_run_failed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("stream a failure", Reply.error(500, "boom"))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream a failure"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        events = [e.event for e in stream]
    assert events[-1] == "thread.run.failed"
