"""Cancellation, the heart of assistd: at every cancellable status, and in its races."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import WEATHER_TOOL, assistant, poll, wait_for_status
from tests.support.spec import assert_matches_schema

LONG_TEXT = " ".join(f"word{i}" for i in range(400))


def _slow(upstream: FakeUpstream, marker: str, delay: float = 0.05) -> None:
    upstream.on(marker, Reply.text(LONG_TEXT, chunk_delay=delay))


def test_cancel_in_progress_run_closes_upstream_and_keeps_partial_text(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    _slow(upstream, "cancel-me-mid-stream")
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "cancel-me-mid-stream"}])
    events: list[str] = []
    received = ""
    cancel_answer: Any = None
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        for event in stream:
            events.append(event.event)
            if event.event == "thread.message.delta":
                received += event.data.delta.content[0].text.value  # type: ignore[index, operator, union-attr]
                if received.count("word") == 3 and cancel_answer is None:
                    run_id = stream.current_run.id  # type: ignore[union-attr]
                    cancel_answer = client.beta.threads.runs.cancel(run_id, thread_id=thread.id)
    assert cancel_answer is not None
    assert cancel_answer.status in ("cancelling", "cancelled")
    assert_matches_schema(cancel_answer, "RunObject")
    for name in ("thread.message.incomplete", "thread.run.step.cancelled", "thread.run.cancelled"):
        assert name in events
    assert events[-1] == "thread.run.cancelled"
    assert events.index("thread.message.incomplete") < events.index("thread.run.cancelled")

    upstream.wait_for_outcome(0, "client_closed", timeout=5)
    run = client.beta.threads.runs.retrieve(cancel_answer.id, thread_id=thread.id)
    assert run.status == "cancelled"
    assert run.cancelled_at is not None and run.expires_at is None and run.usage is not None
    assert_matches_schema(run, "RunObject")

    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.role == "assistant" and message.status == "incomplete"
    assert message.incomplete_details is not None
    assert message.incomplete_details.reason == "run_cancelled"
    kept = message.content[0].text.value  # type: ignore[union-attr]
    assert kept.startswith(received) and LONG_TEXT.startswith(kept) and len(kept) < len(LONG_TEXT)
    assert_matches_schema(message, "MessageObject")

    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert [s.status for s in steps] == ["cancelled"]
    assert steps[0].cancelled_at is not None
    assert_matches_schema(steps[0], "RunStepObject")


def test_cancelled_run_frees_the_thread_for_a_new_run(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    _slow(upstream, "free-the-thread")
    upstream.on("second question", Reply.text("second answer"))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "free-the-thread"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    wait_for_status(client, thread.id, run.id, {"in_progress"})
    upstream.wait_for_requests(1, timeout=5)
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    wait_for_status(client, thread.id, run.id, {"cancelled"})
    client.beta.threads.messages.create(thread.id, role="user", content="second question")
    second = poll(client, thread.id, assistant_id=asst.id)
    assert second.status == "completed"


def test_cancel_queued_run_is_cancelled_at_once_and_never_reaches_upstream(
    make_server: Any, upstream: FakeUpstream
) -> None:
    server = make_server(env={"ASSISTD_WORKER_CONCURRENCY": "1"})
    client = server.client()
    _slow(upstream, "occupy-the-only-slot")
    asst = assistant(client)
    busy = client.beta.threads.create(messages=[{"role": "user", "content": "occupy-the-only-slot"}])
    busy_run = client.beta.threads.runs.create(thread_id=busy.id, assistant_id=asst.id)
    wait_for_status(client, busy.id, busy_run.id, {"in_progress"})
    waiting = client.beta.threads.create(messages=[{"role": "user", "content": "never-sent-upstream"}])
    queued = client.beta.threads.runs.create(thread_id=waiting.id, assistant_id=asst.id)
    assert client.beta.threads.runs.retrieve(queued.id, thread_id=waiting.id).status == "queued"

    answer = client.beta.threads.runs.cancel(queued.id, thread_id=waiting.id)
    assert answer.status == "cancelled" and answer.cancelled_at is not None
    assert_matches_schema(answer, "RunObject")
    client.beta.threads.runs.cancel(busy_run.id, thread_id=busy.id)
    wait_for_status(client, busy.id, busy_run.id, {"cancelled"})
    bodies = [str(r.body["messages"]) for r in upstream.requests]
    assert not any("never-sent-upstream" in b for b in bodies)


def _requires_action(client: openai.OpenAI, upstream: FakeUpstream, marker: str) -> tuple[str, Any]:
    upstream.on(marker, Reply.tool_calls([("get_weather", '{"city": "Paris"}')]))
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": marker}])
    run = poll(client, thread.id, assistant_id=asst.id)
    assert run.status == "requires_action"
    return thread.id, run


def test_cancel_run_waiting_for_tool_outputs(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    thread_id, run = _requires_action(client, upstream, "cancel-while-waiting-for-tools")
    answer = client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    assert answer.status == "cancelled"
    assert answer.required_action is None and answer.expires_at is None
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data[0]
    assert step.type == "tool_calls" and step.status == "cancelled"
    client.beta.threads.messages.create(thread_id, role="user", content="the thread is free again")


def test_cancel_ended_run_is_rejected_with_its_status(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("finish-quickly", Reply.text("done"))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "finish-quickly"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    assert run.status == "completed"
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "message": "Cannot cancel run with status 'completed'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_cancel_unknown_run_or_thread_is_404(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError) as caught:
        client.beta.threads.runs.cancel("run_doesnotexist", thread_id=thread.id)
    assert caught.value.body["message"] == "No run found with id 'run_doesnotexist'."  # type: ignore[index]
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.cancel("run_doesnotexist", thread_id="thread_nope")


def test_two_cancels_at_once_end_in_one_cancellation(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    _slow(upstream, "double-cancel")
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "double-cancel"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    wait_for_status(client, thread.id, run.id, {"in_progress"})
    barrier = threading.Barrier(2)

    def cancel() -> str:
        barrier.wait()
        try:
            return client.beta.threads.runs.cancel(run.id, thread_id=thread.id).status
        except openai.BadRequestError as exc:
            return f"400: {exc.body['message']}"  # type: ignore[index]

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: cancel(), range(2)))
    accepted = [a for a in answers if not a.startswith("400")]
    assert len(accepted) == 1, answers
    rejected = next(a for a in answers if a.startswith("400"))
    assert rejected in (
        "400: Cannot cancel run with status 'cancelling'.",
        "400: Cannot cancel run with status 'cancelled'.",
    )
    assert wait_for_status(client, thread.id, run.id, {"cancelled"}).status == "cancelled"


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.005, 0.01, 0.02])
def test_cancel_racing_completion_ends_in_exactly_one_terminal_state(
    client: openai.OpenAI, upstream: FakeUpstream, delay: float
) -> None:
    upstream.on("race-the-finish", Reply.text("a short answer of a few words", chunk_delay=0.002))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "race-the-finish"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    threading.Event().wait(delay)
    try:
        answer: str | None = client.beta.threads.runs.cancel(run.id, thread_id=thread.id).status
    except openai.BadRequestError as exc:
        assert exc.body["message"] == "Cannot cancel run with status 'completed'."  # type: ignore[index]
        answer = None
    final = wait_for_status(client, thread.id, run.id, {"completed", "cancelled"})
    assert final.status == ("completed" if answer is None else "cancelled")
    again = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert again.status == final.status
    messages = client.beta.threads.messages.list(thread.id, run_id=run.id).data
    assert all(m.status in ("completed", "incomplete") for m in messages)
    client.beta.threads.messages.create(thread.id, role="user", content="thread unlocked")


def test_cancel_racing_tool_output_submission_settles_once(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    thread_id, run = _requires_action(client, upstream, "race-outputs-and-cancel")
    upstream.on("sunny", Reply.text("It is sunny in Paris.", chunk_delay=0.01))
    call_id = run.required_action.submit_tool_outputs.tool_calls[0].id
    barrier = threading.Barrier(2)

    def submit() -> str:
        barrier.wait()
        try:
            return client.beta.threads.runs.submit_tool_outputs(
                run.id, thread_id=thread_id, tool_outputs=[{"tool_call_id": call_id, "output": "sunny"}]
            ).status
        except openai.BadRequestError:
            return "rejected"

    def cancel() -> str:
        barrier.wait()
        try:
            return client.beta.threads.runs.cancel(run.id, thread_id=thread_id).status
        except openai.BadRequestError:
            return "rejected"

    with ThreadPoolExecutor(2) as pool:
        submitted, cancelled = pool.submit(submit), pool.submit(cancel)
        outcome = (submitted.result(), cancelled.result())
    assert outcome != ("rejected", "rejected")
    final = wait_for_status(client, thread_id, run.id, {"completed", "cancelled"})
    if outcome[1] == "rejected":
        assert final.status == "completed"
    else:
        assert final.status == "cancelled"
    if outcome[0] == "rejected":
        assert final.status == "cancelled"


def test_client_leaving_a_stream_does_not_cancel_the_run(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("leave-early", Reply.text(" ".join(f"w{i}" for i in range(30)), chunk_delay=0.02))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "leave-early"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        for event in stream:
            if event.event == "thread.message.delta":
                run_id = stream.current_run.id  # type: ignore[union-attr]
                break
    final = wait_for_status(client, thread.id, run_id, {"completed", "cancelled", "failed"})
    assert final.status == "completed"
    upstream.wait_for_outcome(0, "completed", timeout=5)


async def _async_cancel(server: Any, upstream: FakeUpstream) -> tuple[str, str]:
    client = server.async_client()
    asst = await client.beta.assistants.create(model="fake-model")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "async-cancel"}])
    async with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        async for event in stream:
            if event.event == "thread.message.delta":
                answer = await client.beta.threads.runs.cancel(stream.current_run.id, thread_id=thread.id)
                break
        final = await stream.get_final_run()
    await client.close()
    return answer.status, final.status


def test_async_client_cancels_a_streaming_run(server: Any, upstream: FakeUpstream) -> None:
    import asyncio

    _slow(upstream, "async-cancel")
    answer, final = asyncio.run(_async_cancel(server, upstream))
    assert answer in ("cancelling", "cancelled")
    assert final == "cancelled"
    upstream.wait_for_outcome(0, "client_closed", timeout=5)
