"""Run execution: what is sent upstream, what the run records, how it ends."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import WEATHER_TOOL, assistant, poll, wait_for_status
from tests.support.spec import assert_matches_schema


def _thread(client: openai.OpenAI, *texts: str) -> str:
    return client.beta.threads.create(messages=[{"role": "user", "content": t} for t in texts]).id


def test_run_completes_with_the_upstream_answer_as_a_message(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("say hello", Reply.text("Hello there, friend."))
    asst = assistant(client)
    thread_id = _thread(client, "say hello")
    run = poll(client, thread_id, assistant_id=asst.id)
    assert run.status == "completed"
    assert run.id.startswith("run_") and run.thread_id == thread_id and run.assistant_id == asst.id
    assert run.started_at is not None and run.completed_at is not None and run.expires_at is None
    assert run.usage is not None and run.usage.total_tokens > 0
    assert_matches_schema(run, "RunObject")
    messages = client.beta.threads.messages.list(thread_id)
    assert_matches_schema(messages, "ListMessagesResponse")
    answer = messages.data[0]
    assert answer.role == "assistant" and answer.run_id == run.id and answer.assistant_id == asst.id
    assert answer.status == "completed" and answer.id.startswith("msg_")
    assert answer.content[0].text.value == "Hello there, friend."  # type: ignore[union-attr]
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id)
    assert_matches_schema(steps, "ListRunStepsResponse")
    step = steps.data[0]
    assert step.id.startswith("step_") and step.type == "message_creation" and step.status == "completed"
    assert step.step_details.message_creation.message_id == answer.id  # type: ignore[union-attr]
    again = client.beta.threads.runs.steps.retrieve(step.id, thread_id=thread_id, run_id=run.id)
    assert again.id == step.id


def test_upstream_request_carries_instructions_settings_and_history(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.on("check the request", Reply.text("ok"))
    asst = assistant(client, instructions="Base rules.", tools=[WEATHER_TOOL], temperature=0.3, top_p=0.9)
    thread_id = _thread(client, "first message")
    run = poll(
        client, thread_id, assistant_id=asst.id, model="override-model",
        additional_instructions="Extra rules.", max_completion_tokens=500,
        additional_messages=[{"role": "user", "content": "check the request"}],
        tool_choice="required", parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
    )
    assert run.status == "completed"
    body = upstream.requests[-1].body
    assert body["model"] == "override-model" and body["stream"] is True
    assert body["messages"][0] == {"role": "system", "content": "Base rules.\n\nExtra rules."}
    assert [m["content"] for m in body["messages"][1:]] == ["first message", "check the request"]
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert body["max_completion_tokens"] == 500
    assert body["tools"] == [WEATHER_TOOL] and body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False
    assert body["response_format"]["type"] == "json_schema"
    assert run.model == "override-model" and run.instructions == "Base rules.\n\nExtra rules."
    texts = [m.content[0].text.value for m in client.beta.threads.messages.list(thread_id, order="asc").data]  # type: ignore[union-attr]
    assert texts == ["first message", "check the request", "ok"]


def test_run_instructions_override_the_assistants(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("override", Reply.text("ok"))
    asst = assistant(client, instructions="Not these.")
    run = poll(client, _thread(client, "override"), assistant_id=asst.id, instructions="These instead.")
    assert run.instructions == "These instead."
    assert upstream.requests[-1].body["messages"][0] == {"role": "system", "content": "These instead."}


def test_truncation_last_messages_sends_only_the_most_recent(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("m5", Reply.text("ok"))
    asst = assistant(client)
    thread_id = _thread(client, "m1", "m2", "m3", "m4", "m5")
    poll(client, thread_id, assistant_id=asst.id, truncation_strategy={"type": "last_messages", "last_messages": 2})
    sent = [m["content"] for m in upstream.requests[-1].body["messages"] if m["role"] == "user"]
    assert sent == ["m4", "m5"]


def test_truncation_auto_drops_the_oldest_to_fit_max_prompt_tokens(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("latest question", Reply.text("ok", usage={"prompt_tokens": 200, "completion_tokens": 1}))
    asst = assistant(client)
    old = ["old " + "x" * 600 + str(i) for i in range(6)]
    thread_id = _thread(client, *old, "latest question")
    run = poll(client, thread_id, assistant_id=asst.id, max_prompt_tokens=300)
    sent = [m["content"] for m in upstream.requests[-1].body["messages"] if m["role"] == "user"]
    assert sent[-1] == "latest question" and 1 <= len(sent) < 7
    assert run.status == "completed"


def test_finish_reason_length_ends_the_run_incomplete(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("cut me off", Reply.text("This answer was cut", finish_reason="length"))
    asst = assistant(client)
    thread_id = _thread(client, "cut me off")
    run = poll(client, thread_id, assistant_id=asst.id, max_completion_tokens=256)
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert_matches_schema(run, "RunObject")
    message = client.beta.threads.messages.list(thread_id).data[0]
    assert message.status == "incomplete" and message.content[0].text.value == "This answer was cut"  # type: ignore[union-attr]


def test_prompt_over_max_prompt_tokens_ends_the_run_incomplete(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst = assistant(client)
    thread_id = _thread(client, "y" * 5000)
    run = poll(client, thread_id, assistant_id=asst.id, max_prompt_tokens=256)
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_prompt_tokens"
    assert upstream.requests == []


def test_usage_sums_every_upstream_call_and_is_null_until_the_end(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("usage please", Reply.tool_calls([("get_weather", "{}")], usage={"prompt_tokens": 11, "completion_tokens": 3}))
    upstream.on("cloudy", Reply.text("Cloudy.", usage={"prompt_tokens": 20, "completion_tokens": 5}))
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread_id = _thread(client, "usage please")
    run = poll(client, thread_id, assistant_id=asst.id)
    assert run.status == "requires_action" and run.usage is None
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread_id, tool_outputs=[{"tool_call_id": call.id, "output": "cloudy"}], poll_interval_ms=20
    )
    assert run.status == "completed"
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens) == (31, 8, 39)


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply.error(429, "slow down"), "rate_limit_exceeded"),
        (Reply.error(400, "bad prompt"), "invalid_prompt"),
        (Reply.error(500, "upstream broke"), "server_error"),
        (Reply.drop(after_chunks=2), "server_error"),
    ],
    ids=["429", "400", "500", "dropped-connection"],
)
def test_upstream_errors_fail_the_run_with_the_matching_code(
    client: openai.OpenAI, upstream: FakeUpstream, reply: Reply, code: str
) -> None:
    upstream.on("fail this run", reply)
    asst = assistant(client)
    thread_id = _thread(client, "fail this run")
    run = poll(client, thread_id, assistant_id=asst.id)
    assert run.status == "failed" and run.failed_at is not None
    assert run.last_error is not None and run.last_error.code == code
    assert run.expires_at is None
    assert_matches_schema(run, "RunObject")
    client.beta.threads.messages.create(thread_id, role="user", content="the thread is usable again")


def test_expires_at_is_ten_minutes_while_live_and_null_once_ended(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("expiry", Reply.text("ok"))
    asst = assistant(client)
    thread_id = _thread(client, "expiry")
    run = client.beta.threads.runs.create(thread_id=thread_id, assistant_id=asst.id)
    assert run.status == "queued" and run.expires_at == run.created_at + 600
    assert abs(run.created_at - time.time()) < 5
    done = wait_for_status(client, thread_id, run.id, {"completed"})
    assert done.expires_at is None


def test_thread_with_an_active_run_refuses_new_runs_and_messages(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("hold the thread", Reply.text(" ".join(["hold"] * 300), chunk_delay=0.02))
    asst = assistant(client)
    thread_id = _thread(client, "hold the thread")
    run = client.beta.threads.runs.create(thread_id=thread_id, assistant_id=asst.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.runs.create(thread_id=thread_id, assistant_id=asst.id)
    assert caught.value.body["message"] == f"Thread {thread_id} already has an active run {run.id}."  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.messages.create(thread_id, role="user", content="not now")
    assert caught.value.body["message"] == f"Can't add messages to {thread_id} while a run {run.id} is active."  # type: ignore[index]
    client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    wait_for_status(client, thread_id, run.id, {"cancelled"})


def test_create_thread_and_run_in_one_call(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("both at once", Reply.text("Done both."))
    asst = assistant(client)
    run = client.beta.threads.create_and_run_poll(
        assistant_id=asst.id,
        thread={"messages": [{"role": "user", "content": "both at once"}], "metadata": {"k": "v"}},
        poll_interval_ms=20,
    )
    assert run.status == "completed"
    thread = client.beta.threads.retrieve(run.thread_id)
    assert thread.metadata == {"k": "v"}
    assert client.beta.threads.messages.list(run.thread_id).data[0].content[0].text.value == "Done both."  # type: ignore[union-attr]


def test_runs_list_paginates_and_run_metadata_can_be_modified(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst = assistant(client)
    thread_id = _thread(client, "list runs")
    ids = [poll(client, thread_id, assistant_id=asst.id).id for _ in range(3)]
    page = client.beta.threads.runs.list(thread_id, limit=2)
    assert_matches_schema(page, "ListRunsResponse")
    assert [r.id for r in page.data] == [ids[2], ids[1]] and page.has_more
    rest = client.beta.threads.runs.list(thread_id, limit=2, after=ids[1])
    assert [r.id for r in rest.data] == [ids[0]] and not rest.has_more
    modified = client.beta.threads.runs.update(ids[0], thread_id=thread_id, metadata={"tag": "x"})
    assert modified.metadata == {"tag": "x"}
    assert client.beta.threads.runs.retrieve(ids[0], thread_id=thread_id).metadata == {"tag": "x"}


def test_messages_list_filters_by_run(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst = assistant(client)
    thread_id = _thread(client, "filter by run")
    first = poll(client, thread_id, assistant_id=asst.id)
    poll(client, thread_id, assistant_id=asst.id)
    mine = client.beta.threads.messages.list(thread_id, run_id=first.id).data
    assert len(mine) == 1 and mine[0].run_id == first.id


def test_run_on_unknown_assistant_or_thread_is_404(client: openai.OpenAI) -> None:
    asst = assistant(client)
    thread_id = _thread(client, "x")
    with pytest.raises(openai.NotFoundError) as caught:
        client.beta.threads.runs.create(thread_id=thread_id, assistant_id="asst_nope")
    assert caught.value.body["message"] == "No assistant found with id 'asst_nope'."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id="thread_nope", assistant_id=asst.id)


def test_run_settings_are_validated(client: openai.OpenAI) -> None:
    asst = assistant(client)
    thread_id = _thread(client, "x")
    bad: list[dict[str, Any]] = [
        {"temperature": 3},
        {"top_p": -0.1},
        {"max_prompt_tokens": 100},
        {"max_completion_tokens": 10},
        {"truncation_strategy": {"type": "sometimes"}},
        {"metadata": {f"k{i}": "v" for i in range(17)}},
    ]
    for extra in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            client.beta.threads.runs.create(thread_id=thread_id, assistant_id=asst.id, **extra)
        assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
        assert caught.value.body["param"] is not None, extra  # type: ignore[index]
