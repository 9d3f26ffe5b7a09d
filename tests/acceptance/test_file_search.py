"""The file_search tool inside runs: assistd searches the run's vector stores itself."""

from __future__ import annotations

import json
from typing import Any, Final

import openai
import pytest
from openai.types.beta.threads.runs import FileSearchToolCall

from tests.acceptance.test_vector_stores import upload, wait_ingested
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import WEATHER_TOOL, assistant, poll, wait_for_status
from tests.support.spec import assert_matches_schema

QUOKKA = b"The quokka is a small marsupial living on Rottnest Island near Perth in Western Australia.\n"
COMET = b"A comet is an icy body that releases gas when passing close to the Sun.\n"
SEARCH = Reply.tool_calls([("file_search", '{"query": "marsupial Rottnest Island"}')],
                          usage={"prompt_tokens": 10, "completion_tokens": 2})
ANSWER = "The quokka lives on Rottnest Island 【0†quokka.txt】."
CONTENT: Final = "step_details.tool_calls[*].file_search.results[*].content"
RESULTS = "Passages from the files"  # how the tool result the model reads begins


def searchable_assistant(client: openai.OpenAI, **kw: Any) -> tuple[Any, list[str]]:
    ids = [upload(client, "quokka.txt", QUOKKA), upload(client, "comets.txt", COMET)]
    store = client.vector_stores.create(name="facts", file_ids=ids)
    wait_ingested(client, store.id)
    kw.setdefault("tools", [{"type": "file_search"}])
    asst = assistant(client, tool_resources={"file_search": {"vector_store_ids": [store.id]}}, **kw)
    return asst, ids


def script(upstream: FakeUpstream, question: str, final: Reply | None = None) -> None:
    upstream.on(question, SEARCH)
    upstream.on(RESULTS, final or Reply.text(ANSWER, usage={"prompt_tokens": 30, "completion_tokens": 7}))


def test_file_search_is_answered_inside_the_run_and_cited(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, ids = searchable_assistant(client)
    script(upstream, "where do quokkas live")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "where do quokkas live"}])
    run = poll(client, thread.id, assistant_id=asst.id, include=[CONTENT])
    assert run.status == "completed" and run.required_action is None
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens) == (40, 9, 49)

    first, second = upstream.requests
    assert [t["function"]["name"] for t in first.body["tools"]] == ["file_search"]
    call_id = second.body["messages"][-2]["tool_calls"][0]["id"]
    assert second.body["messages"][-2]["tool_calls"][0]["function"]["name"] == "file_search"
    tool_message = second.body["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == call_id
    assert QUOKKA.decode().strip() in tool_message["content"] and "comet" not in tool_message["content"]

    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    for step in steps:
        assert step.status == "completed" and step.usage is not None
        assert_matches_schema(step, "RunStepObject")
    search_call = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert isinstance(search_call, FileSearchToolCall) and search_call.id == call_id
    results = search_call.file_search.results
    assert results and results[0].file_id == ids[0] and results[0].file_name == "quokka.txt"
    assert 0 < results[0].score <= 1
    assert results[0].content is None  # the text only when include[] asks for it
    assert search_call.file_search.ranking_options is not None
    assert search_call.file_search.ranking_options.ranker == "default_2024_08_21"
    included = client.beta.threads.runs.steps.retrieve(steps[0].id, thread_id=thread.id, run_id=run.id,
                                                       include=[CONTENT])
    content = included.step_details.tool_calls[0].file_search.results[0].content  # type: ignore[index, union-attr]
    assert content is not None and content[0].text == QUOKKA.decode().strip()

    message = client.beta.threads.messages.list(thread.id).data[0]
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.value == ANSWER
    assert_matches_schema(message, "MessageObject")
    [citation] = text.annotations
    assert citation.type == "file_citation" and citation.file_citation.file_id == ids[0]  # type: ignore[union-attr]
    assert text.value[citation.start_index:citation.end_index] == citation.text == "【0†quokka.txt】"


def test_file_search_steps_stream_as_events(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, ids = searchable_assistant(client)
    script(upstream, "stream the search")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream the search"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        events = list(stream)
    names = [e.event for e in events]
    assert "thread.run.requires_action" not in names and names[-1] == "thread.run.completed"
    step_events = [(e.event, e.data.type) for e in events if e.event.startswith("thread.run.step.")  # type: ignore[union-attr]
                   and e.event != "thread.run.step.delta"]
    assert step_events == [
        ("thread.run.step.created", "tool_calls"), ("thread.run.step.in_progress", "tool_calls"),
        ("thread.run.step.completed", "tool_calls"),
        ("thread.run.step.created", "message_creation"), ("thread.run.step.in_progress", "message_creation"),
        ("thread.run.step.completed", "message_creation"),
    ]
    completed = next(e.data for e in events if e.event == "thread.run.step.completed")
    result = completed.step_details.tool_calls[0].file_search.results[0]  # type: ignore[index, union-attr]
    assert result.file_id == ids[0] and result.content is None
    assert not any(e.event == "thread.run.step.delta" and e.data.delta.step_details.tool_calls[0].type == "function"  # type: ignore[index, union-attr]
                   for e in events if e.event == "thread.run.step.delta")
    done = next(e.data for e in events if e.event == "thread.message.completed")
    assert done.content[0].text.annotations[0].file_citation.file_id == ids[0]  # type: ignore[union-attr]


def test_file_search_alongside_a_function_tool_keeps_both_offered(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, _ = searchable_assistant(client, tools=[{"type": "file_search"}, WEATHER_TOOL])
    upstream.on("search then weather", Reply.tool_calls([
        ("file_search", '{"query": "quokka"}'), ("get_weather", '{"city": "Perth"}')]))
    upstream.on("sunny", Reply.text("Sunny on Rottnest 【0†quokka.txt】."))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "search then weather"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    assert [t["function"]["name"] for t in upstream.requests[0].body["tools"]] == ["get_weather", "file_search"]
    assert run.status == "requires_action" and run.required_action is not None
    [pending] = run.required_action.submit_tool_outputs.tool_calls
    assert pending.function.name == "get_weather"
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": pending.id, "output": "sunny"}],
        poll_interval_ms=20)
    assert done.status == "completed"
    messages = upstream.requests[-1].body["messages"]
    assert [c["function"]["name"] for c in messages[-3]["tool_calls"]] == ["file_search", "get_weather"]
    assert RESULTS in messages[-2]["content"] and messages[-1]["content"] == "sunny"
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data[0]
    assert [c.type for c in step.step_details.tool_calls] == ["file_search", "function"]  # type: ignore[union-attr]
    assert_matches_schema(step, "RunStepObject")


def test_file_search_is_not_offered_without_vector_stores(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("no stores", Reply.text("ok"))
    asst = assistant(client, tools=[{"type": "file_search"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "no stores"}])
    assert poll(client, thread.id, assistant_id=asst.id).status == "completed"
    assert "tools" not in upstream.requests[-1].body


def test_searches_stop_being_offered_after_five_rounds(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, _ = searchable_assistant(client)
    upstream.on("keep searching", SEARCH)
    upstream.on(RESULTS, [SEARCH] * 4 + [Reply.text("Gave up.")])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "keep searching"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    assert run.status == "completed"
    offered = ["tools" in r.body for r in upstream.requests]
    assert offered == [True] * 5 + [False]


def test_thread_vector_stores_are_searched_too(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    ids = [upload(client, "comets.txt", COMET)]
    store = client.vector_stores.create(file_ids=ids)
    wait_ingested(client, store.id)
    asst = assistant(client, tools=[{"type": "file_search"}])
    upstream.on("what is a comet", Reply.tool_calls([("file_search", json.dumps({"query": "comet icy"}))]))
    upstream.on(RESULTS, Reply.text("Icy 【0†comets.txt】."))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "what is a comet"}],
                                        tool_resources={"file_search": {"vector_store_ids": [store.id]}})
    run = poll(client, thread.id, assistant_id=asst.id)
    assert run.status == "completed"
    assert COMET.decode().strip() in upstream.requests[-1].body["messages"][-1]["content"]


def test_cancel_after_the_search_ends_the_run_cancelled(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, _ = searchable_assistant(client)
    script(upstream, "cancel after searching", Reply.hang())
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "cancel after searching"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    upstream.wait_for_requests(2)
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    run = wait_for_status(client, thread.id, run.id, {"cancelled", "completed", "failed"})
    assert run.status == "cancelled" and run.usage is not None and run.usage.prompt_tokens == 10
    upstream.wait_for_outcome(1, "client_closed", timeout=5)
    [step] = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.type == "tool_calls" and step.status == "completed"


def test_tool_choice_file_search_forces_only_the_first_search(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, _ = searchable_assistant(client)
    script(upstream, "forced search")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "forced search"}])
    run = poll(client, thread.id, assistant_id=asst.id, tool_choice={"type": "file_search"})
    assert run.status == "completed"
    assert [r.body["tool_choice"] for r in upstream.requests] == [
        {"type": "function", "function": {"name": "file_search"}}, "auto"]


def test_include_asks_for_the_results_text_in_streamed_steps_and_refuses_other_values(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, _ids = searchable_assistant(client)
    script(upstream, "include the text")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "include the text"}])
    with pytest.raises(openai.BadRequestError) as refused:
        client.beta.threads.runs.create(thread.id, assistant_id=asst.id, include=["step_details.nothing"])  # type: ignore[list-item]
    assert refused.value.status_code == 400 and refused.value.body["param"] == "include"  # type: ignore[index]
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id, include=[CONTENT]) as stream:
        events = list(stream)
    completed = next(e.data for e in events if e.event == "thread.run.step.completed")
    content = completed.step_details.tool_calls[0].file_search.results[0].content  # type: ignore[index, union-attr]
    assert content is not None and content[0].text == QUOKKA.decode().strip()
