"""The fake upstream itself, driven by the official openai SDK exactly as assistd drives it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply, split_words

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sdk(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.base_url, api_key="sk-upstream", max_retries=0, timeout=10) as client:
        yield client


def user(text: str) -> list[Any]:
    return [{"role": "system", "content": "You are a test."}, {"role": "user", "content": text}]


def stream(sdk: openai.OpenAI, text: str, **kw: Any) -> list[Any]:
    with sdk.chat.completions.create(model="fake-model", messages=user(text), stream=True, **kw) as chunks:
        return list(chunks)


def content(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


# ------------------------------------------------------------------ replies


def test_streamed_text_in_word_chunks_then_finish_then_usage(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("greet", Reply.text("Hello big world"))
    chunks = stream(sdk, "greet me", stream_options={"include_usage": True})

    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["Hello ", "big ", "world"]
    assert content(chunks) == "Hello big world"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # prompt: (15 + 8 characters) // 4 + 1; completion: one per content chunk
    assert chunks[-1].usage.model_dump() == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9,
                                             "completion_tokens_details": None, "prompt_tokens_details": None}
    assert all(c.object == "chat.completion.chunk" and c.model == "fake-model" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")

    record = upstream.wait_for_outcome(0, "completed")
    assert record.body["messages"][-1] == {"role": "user", "content": "greet me"}
    assert record.headers["authorization"] == "Bearer sk-upstream"
    assert record.marker == "greet me" and record.chunks_sent == 3


def test_no_usage_chunk_unless_asked(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    chunks = stream(sdk, "anything")
    assert content(chunks) == "ok" and all(c.usage is None and c.choices for c in chunks)


def test_explicit_chunks_paced_and_usage_override(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("pace", Reply.text(chunks=["a", "b", "c", "d", "e"], chunk_delay=0.03,
                                   usage={"prompt_tokens": 100, "completion_tokens": 7}))
    started = time.monotonic()
    chunks = stream(sdk, "pace", stream_options={"include_usage": True})
    assert time.monotonic() - started >= 0.12  # four gaps between five chunks
    assert content(chunks) == "abcde"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 107


def test_finish_reason_length_or_none(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("long", Reply.text("cut short", finish_reason="length"))
    upstream.on("truncated", Reply.text("no end", finish_reason=None))
    assert finish_reasons(stream(sdk, "long")) == ["length"]
    chunks = stream(sdk, "truncated")
    assert content(chunks) == "no end" and finish_reasons(chunks) == []


def test_parallel_tool_calls_stream_in_pieces(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo"}'), ("now", "{}")]
    upstream.on("weather", Reply.tool_calls(calls))
    chunks = stream(sdk, "weather in two cities")

    assembled: dict[int, dict[str, str]] = {}
    pieces: dict[int, int] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = assembled.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.function.name or "" if delta.function else ""
            call["arguments"] += delta.function.arguments or "" if delta.function else ""
            pieces[delta.index] = pieces.get(delta.index, 0) + 1
    assert [(c["name"], c["arguments"]) for c in assembled.values()] == calls
    ids = [c["id"] for c in assembled.values()]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 3
    assert pieces[0] >= 3  # the opening delta, then the arguments in two pieces
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_reasons(chunks) == ["tool_calls"] and content(chunks) == ""


def test_tool_call_ids_are_fresh_per_request(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("call", Reply.tool_calls([("f", "{}")]))
    first, second = (stream(sdk, "call")[0].choices[0].delta.tool_calls for _ in range(2))
    assert first and second and first[0].id != second[0].id


def test_non_streamed_requests_get_a_chat_completion(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("plain", Reply.text("Plain answer."))
    upstream.on("tools", Reply.tool_calls([("f", '{"x": 1}')]))
    completion = sdk.chat.completions.create(model="m", messages=user("plain"))
    assert completion.choices[0].message.content == "Plain answer."
    assert completion.choices[0].finish_reason == "stop" and completion.usage is not None

    completion = sdk.chat.completions.create(model="m", messages=user("tools"))
    message = completion.choices[0].message
    assert message.content is None and message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == '{"x": 1}'  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(("status", "error", "code"), [
    (429, openai.RateLimitError, "rate_limit_exceeded"),
    (400, openai.BadRequestError, None),
    (500, openai.InternalServerError, None),
])
def test_http_errors_carry_openais_envelope(upstream: FakeUpstream, sdk: openai.OpenAI, status: int,
                                           error: type[openai.APIStatusError], code: str | None) -> None:
    upstream.on("fail", Reply.error(status, "scripted failure"))
    with pytest.raises(error) as caught:
        stream(sdk, "fail")
    assert caught.value.status_code == status and caught.value.code == code
    assert caught.value.message.endswith("scripted failure")
    assert isinstance(caught.value.body, dict) and set(caught.value.body) == {"message", "type", "param", "code"}
    upstream.wait_for_outcome(0, "error")


def test_drop_breaks_the_stream_after_n_chunks(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("drop", Reply.drop(after_chunks=2))
    received: list[str] = []
    chunks = sdk.chat.completions.create(model="m", messages=user("drop"), stream=True)
    with pytest.raises(openai.APIConnectionError), chunks:  # incomplete chunked body, no [DONE]
        for chunk in chunks:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "part0 part1 "
    assert upstream.wait_for_outcome(0, "dropped").chunks_sent == 2


def test_drop_without_streaming_closes_before_any_response(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("drop", Reply.drop())
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="m", messages=user("drop"))


def test_error_event_mid_stream(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("break", Reply.stream_error(after_chunks=1, message="overloaded"))
    with pytest.raises(openai.APIError, match="overloaded"):
        stream(sdk, "break")


# ------------------------------------------------------------------ the client going away


def test_client_closing_the_stream_is_logged_at_once(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("slow", Reply.text(" ".join(["word"] * 200), chunk_delay=0.2))
    with sdk.chat.completions.create(model="m", messages=user("slow"), stream=True) as chunks:
        next(chunks), next(chunks)  # the opening chunk and the first word
        closed_at = time.monotonic()
    record = upstream.wait_for_outcome(0, "client_closed", timeout=2)
    assert record.ended_at is not None and record.ended_wall is not None
    assert record.ended_at - closed_at < 0.1, "the close must be seen while the fake waits between chunks"
    assert record.chunks_sent == 1


def test_hang_until_the_client_times_out(upstream: FakeUpstream) -> None:
    upstream.on("after", Reply.hang(after_chunks=1))
    upstream.on("before", Reply.hang(before_headers=True))
    with openai.OpenAI(base_url=upstream.base_url, api_key="k", max_retries=0, timeout=0.3) as impatient:
        with pytest.raises(openai.APITimeoutError):
            stream(impatient, "after")
        with pytest.raises(openai.APITimeoutError):
            stream(impatient, "before")
    assert upstream.wait_for_outcome(0, "client_closed", timeout=2).chunks_sent == 1
    assert upstream.wait_for_outcome(1, "client_closed", timeout=2).chunks_sent == 0


def test_async_client_closing_is_logged(upstream: FakeUpstream) -> None:
    upstream.on("async", Reply.text(" ".join(["w"] * 100), chunk_delay=0.05))

    async def read_two_then_close() -> float:
        async with openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k", max_retries=0) as client:
            chunks = await client.chat.completions.create(model="m", messages=user("async"), stream=True)
            async with chunks:
                async for chunk in chunks:
                    if chunk.choices[0].delta.content:
                        break
            return time.monotonic()

    closed_at = asyncio.run(read_two_then_close())
    record = upstream.wait_for_outcome("async", "client_closed", timeout=2)
    assert record.ended_at is not None and record.ended_at - closed_at < 0.1


# ------------------------------------------------------------------ the script


def test_rules_match_the_last_message_of_any_role_and_shape(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("sunny", Reply.text("tool said sunny"))
    upstream.on("parts", Reply.text("parts matched"))
    tool_turn: list[Any] = [
        {"role": "user", "content": "parts? no: weather"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "It is sunny."},
    ]
    answer = sdk.chat.completions.create(model="m", messages=tool_turn)
    assert answer.choices[0].message.content == "tool said sunny"
    parts: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "in two"}, {"type": "text", "text": "parts"}]}]
    assert sdk.chat.completions.create(model="m", messages=parts).choices[0].message.content == "parts matched"
    assert upstream.requests[1].marker == "in two parts"


def test_reply_lists_advance_and_the_last_repeats(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("again", [Reply.text("one"), Reply.text("two")])
    assert [content(stream(sdk, "again")) for _ in range(3)] == ["one", "two", "two"]


def test_rules_first_then_queue_then_default(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    upstream.on("ruled", Reply.text("by rule"))
    upstream.enqueue(Reply.text("queued 1"), Reply.text("queued 2"))
    answers = [content(stream(sdk, text)) for text in ("other", "ruled", "other", "other")]
    assert answers == ["queued 1", "by rule", "queued 2", "ok"]
    upstream.reset()
    assert upstream.requests == [] and content(stream(sdk, "ruled")) == "ok"


def test_waits_time_out_with_a_clear_message(upstream: FakeUpstream) -> None:
    with pytest.raises(AssertionError, match="expected 1 upstream requests"):
        upstream.wait_for_requests(1, timeout=0.05)
    with pytest.raises(AssertionError, match="no upstream request"):
        upstream.wait_for_outcome(0, "completed", timeout=0.05)


def test_a_wrong_outcome_fails_the_wait(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    stream(sdk, "fine")
    with pytest.raises(AssertionError, match="ended 'completed', expected 'client_closed'"):
        upstream.wait_for_outcome(0, "client_closed", timeout=1)


def test_split_words_joins_back() -> None:
    for text in ("", "one", "a b c", "trailing ", "two  spaces"):
        assert "".join(split_words(text)) == text
    assert split_words("a b c") == ["a ", "b ", "c"]


def test_unknown_paths_answer_404(upstream: FakeUpstream) -> None:
    response = httpx.post(upstream.base_url + "/moderations", json={})
    assert response.status_code == 404 and "error" in response.json()


def test_embeddings_give_synonyms_the_same_vector_and_count_batches(upstream: FakeUpstream) -> None:
    response = httpx.post(upstream.base_url + "/embeddings", json={"model": "m", "input": ["car", "automobile", "cat"]})
    car, automobile, cat = (item["embedding"] for item in response.json()["data"])
    assert car == automobile != cat and upstream.embedding_batches == [3]
    upstream.fail_embeddings = True
    assert httpx.post(upstream.base_url + "/embeddings", json={"model": "m", "input": "x"}).status_code == 500


# ------------------------------------------------------------------ standalone, for benchmarks


def test_cli_mode_streams_many_at_once_and_reports() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_upstream", "--port", "0", "--tokens", "5", "--chunk-delay", "0.01"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        base_url = line.split(" ", 1)[1]
        results = asyncio.run(_many_streams(base_url, 200))
        assert results == ["tok0 tok1 tok2 tok3 tok4"] * 200
        root = base_url.removesuffix("/v1")
        stats = httpx.get(f"{root}/stats").json()
        assert stats["requests"] == 200 and stats["completed"] == 200 and stats["client_closed"] == 0
        log = httpx.get(f"{root}/log", params={"since": 190}).json()
        assert len(log) == 10 and "body" not in log[0]
        assert log[0]["marker"].startswith("stream ") and log[0]["outcome"] == "completed"
        assert {"started_at", "started_wall", "ended_at", "ended_wall"} <= set(log[0])
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def _many_streams(base_url: str, n: int) -> list[str]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client:
        async def one(i: int) -> str:
            chunks = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"stream {i}"}], stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_log_endpoint_in_process(upstream: FakeUpstream, sdk: openai.OpenAI) -> None:
    stream(sdk, "logged")
    entries = json.loads(httpx.get(upstream.base_url.removesuffix("/v1") + "/log?since=0").text)
    assert [e["marker"] for e in entries] == ["logged"]
