"""Function tools: requires_action, tool outputs, and what goes back upstream."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.beta.threads.run_submit_tool_outputs_params import ToolOutput

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import WEATHER_TOOL, assistant, poll
from tests.support.spec import assert_matches_schema


def test_parallel_tool_calls_require_action_then_continue_with_outputs(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.on("weather in two cities", Reply.tool_calls([
        ("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo"}'),
    ]))
    upstream.on("rain", Reply.text("Paris is sunny, Oslo is rainy."))
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather in two cities"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    assert run.status == "requires_action" and run.required_action is not None
    assert_matches_schema(run, "RunObject")
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Oslo"]
    assert all(c.id.startswith("call_") and c.type == "function" and c.function.name == "get_weather" for c in calls)

    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.type == "tool_calls" and step.status == "in_progress"

    outputs: list[ToolOutput] = [{"tool_call_id": calls[0].id, "output": "sunny"},
                                 {"tool_call_id": calls[1].id, "output": "rain"}]
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=outputs, poll_interval_ms=20
    )
    assert done.status == "completed" and done.required_action is None
    follow_up = upstream.requests[-1].body["messages"]
    assistant_turn = follow_up[-3]
    assert [c["id"] for c in assistant_turn["tool_calls"]] == [c.id for c in calls]
    assert follow_up[-2:] == [
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "rain"},
    ]
    tool_step = client.beta.threads.runs.steps.retrieve(step.id, thread_id=thread.id, run_id=run.id)
    assert tool_step.status == "completed"
    assert [c.function.output for c in tool_step.step_details.tool_calls] == ["sunny", "rain"]  # type: ignore[union-attr]
    assert_matches_schema(tool_step, "RunStepObject")
    answer = client.beta.threads.messages.list(thread.id).data[0]
    assert answer.content[0].text.value == "Paris is sunny, Oslo is rainy."  # type: ignore[union-attr]


def test_tool_outputs_must_cover_every_pending_call(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("two calls", Reply.tool_calls([("get_weather", "{}"), ("get_weather", "{}")]))
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "two calls"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    calls = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    refused: list[list[ToolOutput]] = [[{"tool_call_id": calls[0].id, "output": "x"}],
                                       [{"tool_call_id": "call_other", "output": "x"}]]
    for outputs in refused:
        with pytest.raises(openai.BadRequestError) as caught:
            client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id, tool_outputs=outputs)
        assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_tool_outputs_for_a_run_not_waiting_are_rejected(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "plain"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "x"}]
        )
    assert caught.value.body["message"] == 'Runs in status "completed" do not accept tool outputs.'  # type: ignore[index]


def test_submit_tool_outputs_with_stream_streams_the_continuation(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("stream the tools", Reply.tool_calls([("get_weather", '{"city": "Rome"}')]))
    upstream.on("warm", Reply.text("Rome is warm."))
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream the tools"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        stream.until_done()
        run = stream.get_final_run()
        tool_snapshot = stream.get_final_run_steps()[-1]
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    assert tool_snapshot.step_details.tool_calls[0].function.arguments == '{"city": "Rome"}'  # type: ignore[union-attr]
    assert tool_snapshot.step_details.tool_calls[0].id == call.id  # type: ignore[union-attr]
    with client.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "warm"}]
    ) as stream:
        events = [e.event for e in stream]
        final = stream.get_final_run()
        text = "".join(m.content[0].text.value for m in stream.get_final_messages())  # type: ignore[union-attr]
    assert final.status == "completed" and text == "Rome is warm."
    assert events[0] == "thread.run.step.completed" and events[1] == "thread.run.queued"
    assert events[-1] == "thread.run.completed"
