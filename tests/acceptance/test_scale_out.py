"""Several processes on one PostgreSQL and one Redis: two `assistd serve --no-worker` API
processes and two `assistd worker` processes, driven with the openai SDK.

Runs are created on one API process and streamed, cancelled or continued from the other, while a
worker executes them; workers are killed and stopped mid-run. Skipped when the PostgreSQL
backend is not selected (ASSISTD_TEST_BACKENDS), since SQLite is one process's database.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.conftest import BACKENDS, Databases
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import WEATHER_TOOL, assistant, wait_for_status, wait_until
from tests.support.server import AssistdServer, free_port
from tests.support.spec import assert_matches_schema

REDIS_URL = os.environ.get("ASSISTD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE_SECONDS = 3.0

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS,
                                reason="scale-out needs the PostgreSQL backend")


@dataclass
class Cluster:
    apis: list[AssistdServer]
    workers: list[AssistdServer]
    database_url: str

    def client(self, api: int) -> openai.OpenAI:
        return self.apis[api].client()

    def worker_of(self, run_id: str) -> AssistdServer:
        """The worker process executing `run_id`, from the worker id it wrote on the run."""
        row = _query(self.database_url, "SELECT worker_id FROM runs WHERE id = $1", run_id)
        worker_id = row[0]["worker_id"]
        assert worker_id, f"{run_id} has no worker"
        pid = int(worker_id.split(":")[1])
        return next(w for w in self.workers if w.pid == pid)

    def worker_ids(self, run_ids: list[str]) -> dict[str, str]:
        rows = _query(self.database_url, "SELECT id, worker_id FROM runs WHERE id = ANY($1::text[])", run_ids)
        return {r["id"]: r["worker_id"] for r in rows}


def _query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    import asyncio

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def make_cluster(upstream: FakeUpstream, databases: Databases,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    started: list[AssistdServer] = []

    def make(apis: int = 2, workers: int = 2, env: dict[str, str] | None = None) -> Cluster:
        url = databases.new("postgresql")
        settings = {"ASSISTD_REDIS_URL": REDIS_URL, "ASSISTD_LEASE_SECONDS": str(LEASE_SECONDS),
                    "ASSISTD_HEARTBEAT_SECONDS": "0.5", **(env or {})}

        def process(role: str) -> AssistdServer:
            srv = AssistdServer(upstream.base_url, database_url=url, env=settings, role=role,
                                data_dir=tmp_path_factory.mktemp(f"cluster-{role}"))
            started.append(srv)
            return srv.start()

        api_procs = [process("api") for _ in range(apis)]  # the first one applies the migrations
        return Cluster(api_procs, [process("worker") for _ in range(workers)], url)

    yield make
    for srv in started:
        srv.stop(timeout=15)


def _start_run(cluster: Cluster, marker: str) -> tuple[openai.OpenAI, Any, Any, Any]:
    """On API process 0: an assistant, a thread whose message is `marker`, and a run on it."""
    client = cluster.client(0)
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": marker}])
    return client, asst, thread, client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)


def _events_url(api: AssistdServer, thread_id: str, run_id: str) -> str:
    return f"{api.base_url}/threads/{thread_id}/runs/{run_id}/events"


def _read_sse(response: httpx.Response) -> list[tuple[str, str, Any]]:
    """(id, event, data) of every frame until `done`."""
    frames: list[tuple[str, str, Any]] = []
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
            continue
        if "event" in fields:
            data = fields.get("data", "")
            frames.append((fields.get("id", ""), fields["event"],
                           data if data == "[DONE]" else json.loads(data)))
            if fields["event"] == "done":
                break
        fields = {}
    return frames


def _text_of(frames: list[tuple[str, str, Any]]) -> str:
    return "".join(part["text"]["value"] for _, event, data in frames if event == "thread.message.delta"
                   for part in data["delta"]["content"])


# ---------------------------------------------------------------- streams and tool calls


def test_run_streamed_on_one_api_process_executes_on_a_worker(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster()
    upstream.on("hello cluster", Reply.text("Answer from a worker process.", chunk_delay=0.01))
    client = cluster.client(0)
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello cluster"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        events = [e.event for e in stream]
        run = stream.get_final_run()
        text = stream.get_final_messages()[0].content[0].text.value
    assert run.status == "completed" and text == "Answer from a worker process."
    assert events[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert events[-1] == "thread.run.completed"
    assert cluster.worker_of(run.id) in cluster.workers
    assert_matches_schema(cluster.client(1).beta.threads.runs.retrieve(run.id, thread_id=thread.id), "RunObject")


def test_other_api_process_replays_a_runs_events_and_follows_it_live(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster()
    text = " ".join(f"w{i}" for i in range(40))
    upstream.on("follow me", Reply.text(text, chunk_delay=0.03))
    _client, _asst, thread, run = _start_run(cluster, "follow me")
    upstream.wait_for_requests(1)
    api = cluster.apis[1]
    with httpx.stream("GET", _events_url(api, thread.id, run.id), params={"after": "0"},
                      headers=api.headers, timeout=30) as response:
        assert response.status_code == 200
        frames = _read_sse(response)
    names = [event for _, event, _ in frames]
    assert names[0] == "thread.run.in_progress" and names[-2:] == ["thread.run.completed", "done"]
    assert _text_of(frames) == text  # every delta, once, in order
    ids = [frame_id for frame_id, event, _ in frames if event != "done"]
    assert all(ids) and len(set(ids)) == len(ids)

    # A client that reconnects after an event gets exactly what followed it.
    cut = len(frames) // 2
    with httpx.stream("GET", _events_url(api, thread.id, run.id),
                      headers={**api.headers, "Last-Event-ID": frames[cut][0]}, timeout=30) as response:
        rest = _read_sse(response)
    assert [f[:2] for f in rest] == [f[:2] for f in frames[cut + 1:]]


def test_reconnect_without_an_event_id_starts_from_the_runs_current_state(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster(workers=1)
    upstream.on("state first", Reply.text("short"))
    client = cluster.client(0)
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "state first"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=20)
    api = cluster.apis[1]
    with httpx.stream("GET", _events_url(api, thread.id, run.id), headers=api.headers, timeout=30) as response:
        frames = _read_sse(response)
    assert [event for _, event, _ in frames] == ["thread.run.completed", "done"]
    assert frames[0][2]["id"] == run.id and frames[0][2]["status"] == "completed"


def test_a_stream_quiet_for_longer_than_its_poll_interval_loses_nothing(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster(workers=1)
    upstream.on("take your time", Reply.text(chunks=["slow", " reply"], chunk_delay=6.0))
    client = cluster.client(0)
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "take your time"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        deltas = [e.data.delta.content[0].text.value for e in stream
                  if e.event == "thread.message.delta"]
        final = stream.get_final_run()
    assert final.status == "completed" and deltas == ["slow", " reply"]
    assert "failed" not in cluster.apis[0].log_text()


def test_tool_outputs_submitted_on_the_other_api_process_continue_the_run(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster()
    upstream.on("cluster weather", Reply.tool_calls([("get_weather", '{"city": "Oslo"}')]))
    upstream.on("cold", Reply.text("Oslo is cold."))
    first, second = cluster.client(0), cluster.client(1)
    asst = assistant(first, tools=[WEATHER_TOOL])
    thread = first.beta.threads.create(messages=[{"role": "user", "content": "cluster weather"}])
    with first.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        stream.until_done()
        run = stream.get_final_run()
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    with second.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "cold"}]
    ) as stream:
        events = [e.event for e in stream]
        final = stream.get_final_run()
    assert final.status == "completed"
    assert events[-1] == "thread.run.completed" and "thread.message.delta" in events
    messages = first.beta.threads.messages.list(thread_id=thread.id, order="asc").data
    assert messages[-1].content[0].text.value == "Oslo is cold."


# ---------------------------------------------------------------- cancel


@pytest.mark.parametrize("cancel_from", [0, 1], ids=["same-api-process", "other-api-process"])
def test_cancel_from_either_api_process_stops_the_workers_upstream_request(
    make_cluster: Any, upstream: FakeUpstream, cancel_from: int
) -> None:
    cluster = make_cluster()
    upstream.on("endless", Reply.text(" ".join(["tok"] * 2000), chunk_delay=0.02))
    client = cluster.client(0)
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "endless"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id) as stream:
        events: list[str] = []
        for event in stream:
            events.append(event.event)
            if event.event == "thread.message.delta" and events.count("thread.message.delta") == 5:
                run_id = stream.current_run.id
                answered = cluster.client(cancel_from).beta.threads.runs.cancel(run_id, thread_id=thread.id)
                assert answered.status in ("cancelling", "cancelled")
        final = stream.get_final_run()
    assert final.status == "cancelled" and final.cancelled_at is not None
    assert events[-1] == "thread.run.cancelled" and "thread.message.incomplete" in events
    upstream.wait_for_outcome("endless", "client_closed", timeout=5)
    message = client.beta.threads.messages.list(thread_id=thread.id).data[0]
    assert message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_cancelled"
    assert message.content[0].text.value.startswith("tok tok")


# ---------------------------------------------------------------- workers that die or stop


def test_run_of_a_killed_worker_is_settled_by_another(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster()
    upstream.on("doomed", Reply.text(" ".join(["x"] * 2000), chunk_delay=0.02))
    client, asst, thread, run = _start_run(cluster, "doomed")
    wait_until(lambda: len(client.beta.threads.messages.list(thread_id=thread.id).data) == 2,
               what="the answer's message")  # the turn has written something: it can't be re-run
    victim = cluster.worker_of(run.id)
    victim.kill()
    settled = wait_for_status(client, thread.id, run.id, {"failed", "completed", "cancelled"},
                              timeout=LEASE_SECONDS + 15)
    assert settled.status == "failed"
    assert settled.last_error is not None and settled.last_error.code == "server_error"
    assert settled.failed_at is not None and settled.expires_at is None
    # The thread is free again: a new run goes to the surviving worker.
    upstream.on("after the crash", Reply.text("still here"))
    client.beta.threads.messages.create(thread_id=thread.id, role="user", content="after the crash")
    again = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=20)
    assert again.status == "completed"
    assert cluster.worker_of(again.id) is not victim


def test_run_of_a_killed_worker_that_had_written_nothing_is_resumed_by_another(
    make_cluster: Any, upstream: FakeUpstream
) -> None:
    cluster = make_cluster()
    upstream.on("resume me", [Reply.hang(before_headers=True), Reply.text("resumed answer")])
    client, _asst, thread, run = _start_run(cluster, "resume me")
    upstream.wait_for_requests(1)
    victim = cluster.worker_of(run.id)
    victim.kill()
    done = wait_for_status(client, thread.id, run.id, {"completed", "failed"}, timeout=LEASE_SECONDS + 15)
    assert done.status == "completed"
    assert cluster.worker_of(run.id) is not victim
    assert [r.marker for r in upstream.requests] == ["resume me", "resume me"]  # the turn ran again
    messages = client.beta.threads.messages.list(thread_id=thread.id).data
    assert [m.role for m in messages] == ["assistant", "user"]  # one answer, not two
    assert messages[0].content[0].text.value == "resumed answer"  # type: ignore[union-attr]


def test_sigterm_lets_a_worker_finish_its_run_before_it_exits(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster(workers=1)
    text = " ".join(f"t{i}" for i in range(40))
    upstream.on("finish me", Reply.text(text, chunk_delay=0.05))  # about 2 s
    client, _asst, thread, run = _start_run(cluster, "finish me")
    upstream.wait_for_requests(1)
    worker = cluster.workers[0]
    assert worker.stop(signal.SIGTERM, timeout=30) == 0
    done = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert done.status == "completed"
    assert client.beta.threads.messages.list(thread_id=thread.id).data[0].content[0].text.value == text  # type: ignore[union-attr]


def test_stopped_worker_hands_back_runs_it_has_not_started(make_cluster: Any, upstream: FakeUpstream) -> None:
    """With no worker left, queued runs stay queued (truthfully), and the next worker takes them."""
    cluster = make_cluster(workers=1)
    cluster.workers[0].stop()
    client = cluster.client(0)
    asst = assistant(client)
    upstream.on("waiting", Reply.text("taken at last"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "waiting"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    time.sleep(1.0)
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "queued"
    assert upstream.requests == []
    cluster.workers[0].start()
    assert wait_for_status(client, thread.id, run.id, {"completed"}).status == "completed"


def test_requires_action_run_expires_with_no_worker_running(make_cluster: Any, upstream: FakeUpstream) -> None:
    cluster = make_cluster(workers=1, env={"ASSISTD_RUN_EXPIRES_SECONDS": "3"})
    upstream.on("expire me", Reply.tool_calls([("get_weather", '{"city": "Lima"}')]))
    client = cluster.client(0)
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "expire me"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    wait_for_status(client, thread.id, run.id, {"requires_action"})
    cluster.workers[0].stop()
    expired = wait_for_status(client, thread.id, run.id, {"expired"}, timeout=15)
    assert expired.expires_at is None and expired.required_action is None


# ---------------------------------------------------------------- many runs


def test_a_worker_takes_at_most_its_concurrency_and_the_rest_wait_queued(
    make_cluster: Any, upstream: FakeUpstream
) -> None:
    cluster = make_cluster(apis=1, workers=1, env={"ASSISTD_WORKER_CONCURRENCY": "2"})
    upstream.on("limited", Reply.text(" ".join(["z"] * 30), chunk_delay=0.05))  # 1.5 s each
    client = cluster.client(0)
    asst = assistant(client)
    runs = []
    for i in range(4):
        thread = client.beta.threads.create(messages=[{"role": "user", "content": f"limited {i}"}])
        runs.append(client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id))
    upstream.wait_for_requests(2)
    time.sleep(0.5)
    statuses = sorted(client.beta.threads.runs.retrieve(r.id, thread_id=r.thread_id).status for r in runs)
    assert statuses == ["in_progress", "in_progress", "queued", "queued"]
    assert len(upstream.requests) == 2
    for run in runs:
        assert wait_for_status(client, run.thread_id, run.id, {"completed"}).status == "completed"
    assert len(upstream.requests) == 4


def test_many_concurrent_runs_spread_over_the_workers_none_executed_twice(
    make_cluster: Any, upstream: FakeUpstream
) -> None:
    cluster = make_cluster()
    count = 60
    upstream.default = Reply.text("done here", chunk_delay=0.02)
    clients = [cluster.client(0), cluster.client(1)]
    asst = assistant(clients[0])

    def one(i: int) -> tuple[str, str]:
        client = clients[i % 2]
        thread = client.beta.threads.create(messages=[{"role": "user", "content": f"job-{i:03d}"}])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id,
                                                       poll_interval_ms=50)
        return run.id, run.status

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(count)))
    finally:
        upstream.default = Reply.text("ok")
    assert [status for _, status in results] == ["completed"] * count
    markers = sorted(r.marker for r in upstream.requests)
    assert markers == [f"job-{i:03d}" for i in range(count)]  # each run's request exactly once
    owners = cluster.worker_ids([run_id for run_id, _ in results])
    per_worker = {w: list(owners.values()).count(w) for w in set(owners.values())}
    assert len(per_worker) == 2, per_worker  # both workers took a share
    wait_until(lambda: all(r.outcome == "completed" for r in upstream.requests), what="upstream requests ending")


# ---------------------------------------------------------------- Redis outage


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, so the test can kill it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _accepts(port), what="redis-server to listen")
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait(10)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cancel_still_stops_the_run_while_redis_is_down(
    make_cluster: Any, upstream: FakeUpstream, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    redis_url, redis_proc = own_redis
    cluster = make_cluster(env={"ASSISTD_REDIS_URL": redis_url})
    upstream.on("no redis", Reply.text(" ".join(["r"] * 2000), chunk_delay=0.02))
    client, _asst, thread, run = _start_run(cluster, "no redis")
    wait_until(lambda: len(client.beta.threads.messages.list(thread_id=thread.id).data) == 2,
               what="the answer's message")
    redis_proc.kill()
    redis_proc.wait(10)
    answered = cluster.client(1).beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert answered.status == "cancelling"
    upstream.wait_for_outcome("no redis", "client_closed", timeout=5)
    final = wait_for_status(client, thread.id, run.id, {"cancelled"})
    assert final.cancelled_at is not None
    assert client.beta.threads.messages.list(thread_id=thread.id).data[0].status == "incomplete"
