"""What survives a crash, a restart and a graceful stop; expiry of forgotten runs."""

from __future__ import annotations

import signal
from typing import Any

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import WEATHER_TOOL, assistant, poll, wait_for_status, wait_until

SLOW = " ".join(f"t{i}" for i in range(2000))


def test_acknowledged_writes_survive_kill_9(make_server: Any, upstream: FakeUpstream) -> None:
    server = make_server()
    client = server.client()
    asst = assistant(client, name="durable")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "remember me"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    server.kill()
    server.start()
    client = server.client()
    assert client.beta.assistants.retrieve(asst.id).name == "durable"
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "completed"
    texts = [m.content[0].text.value for m in client.beta.threads.messages.list(thread.id, order="asc")]
    assert texts[0] == "remember me" and len(texts) == 2


def test_run_left_live_by_a_killed_process_is_settled_on_restart(make_server: Any, upstream: FakeUpstream) -> None:
    upstream.on("crash during this", Reply.text(SLOW, chunk_delay=0.01))
    # SQLite settles at start (one process owns the file); PostgreSQL when the lease runs out.
    server = make_server(env={"ASSISTD_LEASE_SECONDS": "3", "ASSISTD_HEARTBEAT_SECONDS": "1"})
    client = server.client()
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "crash during this"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    wait_until(lambda: len(client.beta.threads.messages.list(thread.id).data) == 2, what="assistant message")
    server.kill()
    server.start()
    client = server.client()
    final = wait_for_status(client, thread.id, run.id, {"failed", "cancelled", "completed"})
    assert final.status == "failed" and final.last_error is not None
    assert final.last_error.code == "server_error" and final.expires_at is None
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.role == "assistant" and message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_failed"
    client.beta.threads.messages.create(thread.id, role="user", content="thread usable after recovery")


def test_sigterm_settles_running_runs_before_exit(make_server: Any, upstream: FakeUpstream) -> None:
    upstream.on("stop during this", Reply.text(SLOW, chunk_delay=0.01))
    server = make_server(env={"ASSISTD_SHUTDOWN_GRACE_SECONDS": "1"})
    client = server.client()
    asst = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stop during this"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    wait_for_status(client, thread.id, run.id, {"in_progress"})
    upstream.wait_for_requests(1, timeout=5)
    server.stop(sig=signal.SIGTERM, timeout=20)
    upstream.wait_for_outcome(0, "client_closed", timeout=5)
    server.start()
    final = server.client().beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert final.status == "failed" and final.last_error is not None
    assert final.last_error.code == "server_error"


def test_run_waiting_for_tool_outputs_expires_at_expires_at(make_server: Any, upstream: FakeUpstream) -> None:
    upstream.on("let me expire", Reply.tool_calls([("get_weather", "{}")]))
    server = make_server(env={"ASSISTD_RUN_EXPIRES_SECONDS": "2"})
    client = server.client()
    asst = assistant(client, tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "let me expire"}])
    run = poll(client, thread.id, assistant_id=asst.id)
    assert run.status == "requires_action" and run.expires_at == run.created_at + 2
    expired = wait_for_status(client, thread.id, run.id, {"expired"}, timeout=10)
    assert expired.expires_at is None and expired.required_action is None
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "expired" and step.expired_at is not None
    client.beta.threads.messages.create(thread.id, role="user", content="free after expiry")
