"""Faults outside assistd: an upstream that sends no tokens, a database that goes away, locks
that cross, Redis lost mid-stream. Each test drives a real server with the openai SDK.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, poll, wait_for_status

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
    assert message.content[0].text.value == "part0 part1 "  # type: ignore[union-attr]
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
