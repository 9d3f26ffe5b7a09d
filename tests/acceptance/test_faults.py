"""Faults outside assistd: an upstream that sends no tokens, a database that goes away, locks
that cross, Redis lost mid-stream. Each test drives a real server with the openai SDK.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.acceptance.test_scale_out import make_cluster, own_redis  # noqa: F401 (fixtures)
from tests.conftest import BACKENDS, Databases
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import WEATHER_TOOL, assistant, poll, wait_for_status, wait_until
from tests.support.tcp_proxy import TcpProxy

# ---------------------------------------------------------------- an upstream that sends no tokens


def test_run_streaming_keep_alives_only_ends_expired_at_its_expires_at(make_server: Any, upstream: FakeUpstream) -> None:
    server = make_server(env={"ASSISTD_RUN_EXPIRES_SECONDS": "3"})
    client = server.client()
    upstream.on("stay silent", Reply.keep_alive(every=0.5, after_chunks=2))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stay silent"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        events = [event.event for event in stream]
        run = stream.get_final_run()
    assert events[-1] == "thread.run.expired" and run.status == "expired"
    assert "thread.message.incomplete" in events
    upstream.wait_for_outcome("stay silent", "client_closed", timeout=5)  # the upstream request was closed
    message = client.beta.threads.messages.list(thread_id=thread.id).data[0]
    assert message.status == "incomplete" and message.incomplete_details is not None
    assert message.incomplete_details.reason == "run_expired"
    assert message.content[0].text.value == "part0 part1 "
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert [step.status for step in steps] == ["expired"]
    # The thread is free again.
    upstream.on("speak now", Reply.text("spoken"))
    client.beta.threads.messages.create(thread_id=thread.id, role="user", content="speak now")
    assert poll(client, thread.id, assistant_id=asst.id).status == "completed"


def test_upstream_timeout_counts_time_without_tokens_not_without_bytes(make_server: Any, upstream: FakeUpstream) -> None:
    server = make_server(env={"ASSISTD_UPSTREAM_TIMEOUT": "2"})
    client = server.client()
    upstream.on("only keep-alives", Reply.keep_alive(every=0.5, after_chunks=1))
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "only keep-alives"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    failed = wait_for_status(client, thread.id, run.id, {"failed", "completed", "expired"}, timeout=20)
    assert failed.status == "failed" and failed.last_error is not None
    assert failed.last_error.code == "server_error" and "no tokens" in failed.last_error.message
    upstream.wait_for_outcome("only keep-alives", "client_closed", timeout=5)


# ---------------------------------------------------------------- locks taken in one order


@pytest.mark.timeout(240)
def test_deleting_threads_while_their_runs_start_never_deadlocks(make_server: Any, upstream: FakeUpstream,
                                                                 backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("row locks that can cross are PostgreSQL's")
    server = make_server()
    client = server.client()
    asst = assistant(client)
    upstream.default = Reply.text("a quick answer in a few words", chunk_delay=0.001)

    def attempt(i: int) -> tuple[int, int]:
        thread = client.beta.threads.create(messages=[{"role": "user", "content": f"race-{i}"}])
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as http:
            created = http.post(f"/threads/{thread.id}/runs", json={"assistant_id": asst.id})
            upstream.wait_for_requests(1)  # (any request): the worker is starting runs
            deleted = http.delete(f"/threads/{thread.id}")
        return created.status_code, deleted.status_code

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(attempt, range(80)))
    finally:
        upstream.default = Reply.text("ok")
    assert all(created == 200 for created, _ in results), results
    assert all(deleted == 200 for _, deleted in results), results
    assert "Deadlock" not in server.log_text()


# ---------------------------------------------------------------- the database out of reach


@pytest.mark.timeout(180)
def test_postgresql_out_of_reach_answers_503_and_the_run_says_the_database_was_unavailable(
    make_server: Any, upstream: FakeUpstream, databases: Databases, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite is a file: it can't be out of reach")
    url = urlsplit(databases.new("postgresql"))
    with TcpProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
        server = make_server(env={"ASSISTD_DATABASE_URL": proxied})
        client = server.client()
        upstream.on("long answer", Reply.text(" ".join(f"w{i}" for i in range(400)), chunk_delay=0.05))
        asst = assistant(client)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "long answer"}])
        run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
        wait_until(lambda: len(client.beta.threads.messages.list(thread_id=thread.id).data) == 2,
                   what="the answer's message")

        proxy.cut()
        ready = httpx.get(f"{server.root_url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.headers["retry-after"].isdigit()
        assert "database" in ready.json()["problems"]
        assert httpx.get(f"{server.root_url}/healthz", timeout=30).status_code == 200  # alive: liveness only
        for call in (client.beta.assistants.list, client.beta.threads.create):
            with pytest.raises(openai.InternalServerError) as caught:
                call()
            assert caught.value.status_code == 503
            assert caught.value.response.headers["retry-after"].isdigit()
            assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}
        upstream.wait_for_outcome("long answer", "client_closed", timeout=15)  # the run stopped generating

        proxy.restore()
        wait_until(lambda: httpx.get(f"{server.root_url}/readyz", timeout=30).status_code == 200,
                   timeout=30, what="assistd ready again")
        failed = wait_for_status(client, thread.id, run.id, {"failed", "completed"}, timeout=30)
        assert failed.status == "failed" and failed.last_error is not None
        assert "database was unavailable" in failed.last_error.message
        message = client.beta.threads.messages.list(thread_id=thread.id).data[0]
        assert message.status == "incomplete" and message.content[0].text.value.startswith("w0 w1")
        # Recovered without a restart: a new run goes through.
        upstream.on("after the outage", Reply.text("back"))
        again = client.beta.threads.create(messages=[{"role": "user", "content": "after the outage"}])
        assert poll(client, again.id, assistant_id=asst.id).status == "completed"


# ---------------------------------------------------------------- Redis lost mid-stream


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="split roles need the PostgreSQL backend")
def test_stream_falls_back_to_the_database_when_redis_dies_mid_run(
    make_cluster: Any, upstream: FakeUpstream, own_redis: tuple[str, subprocess.Popen[bytes]]  # noqa: F811
) -> None:
    redis_url, redis_proc = own_redis
    cluster = make_cluster(apis=1, workers=1, env={"ASSISTD_REDIS_URL": redis_url})
    text = " ".join(f"d{i}" for i in range(100))
    upstream.on("lose redis", Reply.text(text, chunk_delay=0.04))
    client = cluster.client(0)
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "lose redis"}])
    events: list[str] = []
    deltas: list[str] = []
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        for event in stream:
            events.append(event.event)
            if event.event == "thread.message.delta":
                deltas.append(event.data.delta.content[0].text.value)
                if len(deltas) == 22:
                    redis_proc.kill()
                    redis_proc.wait(10)
        run = stream.get_final_run()
        final_text = stream.get_final_messages()[0].content[0].text.value
    assert run.status == "completed" and events[-1] == "thread.run.completed"
    assert "thread.message.completed" in events
    assert events.index("thread.message.completed") < events.index("thread.run.completed")
    assert "".join(deltas) == text and final_text == text  # every word, once, through deltas


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="split roles need the PostgreSQL backend")
def test_tool_outputs_streamed_while_redis_is_down_follow_the_run_from_the_database(
    make_cluster: Any, upstream: FakeUpstream, own_redis: tuple[str, subprocess.Popen[bytes]]  # noqa: F811
) -> None:
    redis_url, redis_proc = own_redis
    cluster = make_cluster(apis=1, workers=1, env={"ASSISTD_REDIS_URL": redis_url})
    upstream.on("weather without redis", Reply.tool_calls([("get_weather", '{"city": "Bergen"}')]))
    upstream.on("rainy", Reply.text("Bergen is rainy, as ever.", chunk_delay=0.02))
    client = cluster.client(0)
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather without redis"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    assert run.status == "requires_action"
    redis_proc.kill()
    redis_proc.wait(10)
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    with client.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "rainy"}]
    ) as stream:
        events = [event.event for event in stream]
        final = stream.get_final_run()
        text = stream.get_final_messages()[0].content[0].text.value
    assert final.status == "completed" and events[-1] == "thread.run.completed"
    assert events.index("thread.message.completed") < events.index("thread.run.completed")
    assert text == "Bergen is rainy, as ever."
    assert events.count("thread.message.created") == 1  # the earlier turn's past is not sent again
