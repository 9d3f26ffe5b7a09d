"""Upstream.stream reads the streamed body itself: plain dict chunks parsed from the SSE
`data:` events of a real HTTP server (the fake upstream on 127.0.0.1), with the same endings
as before: [DONE], an UpstreamError for anything unreadable, the idle timeout, and the
connection closed as soon as the block is left."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from assistd.config import Settings
from assistd.execution.upstream import Chunk, Upstream, UpstreamError, _Events
from tests.support.fake_upstream import FakeUpstream, Reply

REQUEST: dict[str, Any] = {"model": "fake-model", "stream_options": {"include_usage": True}}


def request(marker: str) -> dict[str, Any]:
    return {**REQUEST, "messages": [{"role": "user", "content": marker}]}


def run_with_upstream(upstream: FakeUpstream, scenario: Callable[[Upstream], Awaitable[Any]], *,
                      idle: float = 10.0) -> Any:
    """Run `scenario` with an Upstream pointed at the fake (no retries; `idle`: its timeout)."""
    async def main() -> Any:
        client = Upstream(Settings(upstream_base_url=upstream.base_url, upstream_timeout=idle, upstream_max_retries=0))
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(main())


def read_all(upstream: FakeUpstream, marker: str, *, idle: float = 10.0) -> list[Chunk]:
    async def scenario(client: Upstream) -> list[Chunk]:
        async with client.stream(request(marker)) as chunks:
            return [chunk async for chunk in chunks]

    result: list[Chunk] = run_with_upstream(upstream, scenario, idle=idle)
    return result


def read_until_error(upstream: FakeUpstream, marker: str, *, idle: float = 10.0) -> tuple[list[Chunk], UpstreamError]:
    """The chunks that came before the stream failed, and its UpstreamError."""
    received: list[Chunk] = []

    async def scenario(client: Upstream) -> None:
        async with client.stream(request(marker)) as chunks:
            async for chunk in chunks:
                received.append(chunk)

    with pytest.raises(UpstreamError) as caught:
        run_with_upstream(upstream, scenario, idle=idle)
    return received, caught.value


def text_of(chunks: list[Chunk]) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk.get("choices") or ())


def finish_reasons(chunks: list[Chunk]) -> list[str]:
    return [reason for chunk in chunks for choice in chunk.get("choices") or () if (reason := choice.get("finish_reason"))]


# ---------------------------------------------------------------- what comes through


def test_streamed_text_arrives_as_plain_dicts_then_usage_and_done_ends_it(upstream: FakeUpstream) -> None:
    upstream.on("greet", Reply.text("Hello big world"))
    chunks = read_all(upstream, "greet")
    assert all(type(chunk) is dict for chunk in chunks)
    assert text_of(chunks) == "Hello big world"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert upstream.wait_for_outcome("greet", "completed").outcome == "completed"


def test_parallel_tool_calls_arrive_as_dict_pieces_joined_by_index(upstream: FakeUpstream) -> None:
    upstream.on("weather", Reply.tool_calls([("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]))
    chunks = read_all(upstream, "weather")
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            for piece in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(piece["index"], {"id": "", "name": "", "arguments": ""})
                function = piece.get("function") or {}
                call["id"] += piece.get("id") or ""
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        ("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert finish_reasons(chunks) == ["tool_calls"]


def test_done_ends_the_stream_whatever_follows_it(upstream: FakeUpstream) -> None:
    upstream.on("early done", Reply.raw_data("[DONE]", after_chunks=2))  # the finish chunk comes after it
    chunks = read_all(upstream, "early done")
    assert text_of(chunks) == "part0 part1 "
    assert finish_reasons(chunks) == []


def test_json_with_unescaped_line_separators_and_crlf_lines_is_read_whole(upstream: FakeUpstream) -> None:
    # JSON may hold U+2028 and NEL unescaped (str.splitlines would cut there); SSE lines may end in CRLF.
    upstream.on("separators", Reply.raw_data(
        '{"choices": [{"index": 0, "delta": {"content": "a\u2028b\x85c"}, "finish_reason": null}]}',
        b'data: {"choices": [{"index": 0, "delta": {"content": "d"}}]}\r\n\r\n', after_chunks=0))
    assert text_of(read_all(upstream, "separators")) == "a\u2028b\x85cd"


def test_events_are_the_same_however_the_body_is_cut() -> None:
    body = (b": keep-alive\r\n\r\ndata: {\"a\": 1}\r\n\r\nevent: x\ndata: [1,\ndata: 2]\n\nid: 7\rdata:{}\r\r"
            b"data: \xe2\x80\xa8\n\n")
    whole = _Events().feed(body)
    assert whole == [b'{"a": 1}', b"[1,\n2]", b"{}", "\u2028".encode()]
    events = _Events()
    assert [event for i in range(len(body)) for event in events.feed(body[i:i + 1])] == whole


def test_a_finished_stream_gives_its_keep_alive_connection_back_for_the_next_request() -> None:
    # The fake upstream closes every connection; this server keeps it, as OpenAI's does.
    chunk = b'{"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}'
    body = b"data: " + chunk + b"\n\ndata: [DONE]\n\n"
    connections: list[asyncio.Task[None]] = []

    async def answer_each_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.append(task)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                await reader.readexactly(int(re.findall(rb"(?i)content-length: *(\d+)", head)[0]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        writer.close()

    async def main() -> list[str]:
        server = await asyncio.start_server(answer_each_request, "127.0.0.1", 0)
        client = Upstream(Settings(upstream_base_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"))
        texts = []
        for _ in range(3):
            async with client.stream(request("again")) as chunks:
                texts.append(text_of([chunk async for chunk in chunks]))
        await client.close()
        server.close()
        await asyncio.wait_for(asyncio.gather(*connections), 5)  # each ends when the client closes it
        return texts

    assert asyncio.run(main()) == ["hi"] * 3
    assert len(connections) == 1


# ---------------------------------------------------------------- failures


def test_a_malformed_data_line_fails_the_stream_with_an_upstream_error(upstream: FakeUpstream) -> None:
    upstream.on("garbled", Reply.raw_data('{"choices": [{"delta": '))
    received, error = read_until_error(upstream, "garbled")
    assert text_of(received) == "part0 "
    assert error.code == "server_error"
    assert error.message.startswith("The upstream sent a stream event that is not JSON")
    assert '{"choices": [{"delta": ' in error.message


@pytest.mark.parametrize(("data", "flaw"), [
    ("[1, 2]", "not a JSON object"),
    ('{"choices": {"index": 0}}', "choices is not a list"),
    ('{"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]}',
     "a tool call without its index"),
    ('{"choices": [], "usage": {"prompt_tokens": 3}}', "usage without its token counts"),
], ids=["array", "choices-object", "call-without-index", "usage-without-counts"])
def test_a_chunk_not_shaped_like_one_fails_the_stream_with_an_upstream_error(
        upstream: FakeUpstream, data: str, flaw: str) -> None:
    upstream.on("misshapen", Reply.raw_data(data))
    _, error = read_until_error(upstream, "misshapen")
    assert error.code == "server_error"
    assert error.message.startswith(f"The upstream sent a malformed chunk ({flaw})")


def test_an_error_object_mid_stream_fails_the_stream_with_its_message(upstream: FakeUpstream) -> None:
    upstream.on("overload", Reply.stream_error(after_chunks=1, message="The server is overloaded"))
    received, error = read_until_error(upstream, "overload")
    assert text_of(received) == "part0 "
    assert (error.code, error.message) == ("server_error", "The upstream failed mid-stream: The server is overloaded")


def test_a_connection_dropped_mid_stream_fails_as_a_connection_error(upstream: FakeUpstream) -> None:
    upstream.on("dropping", Reply.drop(after_chunks=2))
    received, error = read_until_error(upstream, "dropping")
    assert text_of(received) == "part0 part1 "
    assert error.code == "server_error"
    assert error.message.startswith(f"Upstream connection failed ({upstream.base_url}/chat/completions)")


def test_keep_alive_comments_alone_trip_the_idle_timeout(upstream: FakeUpstream) -> None:
    upstream.on("silent", Reply.keep_alive(every=0.1, after_chunks=1))
    started = time.monotonic()
    received, error = read_until_error(upstream, "silent", idle=0.8)
    assert 0.8 <= time.monotonic() - started < 5
    assert text_of(received) == "part0 "
    assert (error.code, error.message) == ("server_error", "The upstream model sent no tokens for 0.8 seconds.")
    upstream.wait_for_outcome("silent", "client_closed", timeout=2)


# ---------------------------------------------------------------- stopping early


def test_leaving_the_block_early_closes_the_connection_at_once(upstream: FakeUpstream) -> None:
    upstream.on("long", Reply.text(" ".join(["word"] * 200), chunk_delay=0.3))

    async def scenario(client: Upstream) -> float:
        async with client.stream(request("long")) as chunks:
            async for chunk in chunks:
                if text_of([chunk]):
                    break
        return time.monotonic()

    left_at = run_with_upstream(upstream, scenario)
    record = upstream.wait_for_outcome("long", "client_closed", timeout=2)
    assert record.ended_at is not None and record.ended_at - left_at < 0.2  # not at the next chunk, 0.3 s later
    assert record.chunks_sent == 1


def test_cancelling_the_reading_task_closes_the_connection_at_once(upstream: FakeUpstream) -> None:
    upstream.on("cancel me", Reply.text(" ".join(["word"] * 200), chunk_delay=1.0))

    async def scenario(client: Upstream) -> float:
        first_word = asyncio.Event()

        async def read() -> None:
            async with client.stream(request("cancel me")) as chunks:
                async for chunk in chunks:
                    if text_of([chunk]):
                        first_word.set()

        task = asyncio.create_task(read())
        await first_word.wait()
        await asyncio.sleep(0.1)  # the reader now waits for the next chunk, a second away
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic()

    cancelled_at = run_with_upstream(upstream, scenario)
    record = upstream.wait_for_outcome("cancel me", "client_closed", timeout=2)
    assert record.ended_at is not None and record.ended_at - cancelled_at < 0.2


# ---------------------------------------------------------------- the transport


def test_more_streams_than_aiohttps_default_connection_limit_are_all_open_at_once(upstream: FakeUpstream) -> None:
    """aiohttp lets 100 connections be open at once unless told otherwise: the 101st run would
    wait for another run to end before its upstream request even left."""
    streams = 130
    upstream.on("many", Reply.text(" ".join(["word"] * 200), chunk_delay=0.2))  # 40 s: none ends by itself

    async def scenario(client: Upstream) -> int:
        first_words = 0
        everyone_started = asyncio.Event()

        async def read() -> None:
            nonlocal first_words
            async with client.stream(request("many")) as chunks:
                async for chunk in chunks:
                    if text_of([chunk]):
                        first_words += 1
                        if first_words == streams:
                            everyone_started.set()
                        await everyone_started.wait()  # hold every stream open until all have spoken
                        return

        await asyncio.wait_for(asyncio.gather(*(read() for _ in range(streams))), timeout=10)
        return first_words

    assert run_with_upstream(upstream, scenario) == streams


def test_an_upstream_refusing_connections_fails_as_a_connection_error_not_a_timeout() -> None:
    async def scenario() -> UpstreamError:
        client = Upstream(Settings(upstream_base_url="http://127.0.0.1:9/v1", upstream_max_retries=0))
        try:
            with pytest.raises(UpstreamError) as caught:
                async with client.stream(request("anyone there")):
                    pass
            return caught.value
        finally:
            await client.close()

    error = asyncio.run(scenario())
    assert "could not be reached" in error.message and "timed out" not in error.message
    assert "Connect call failed" in error.message  # what the socket said, for the operator
