"""An upstream that says "try again" before streaming anything is retried (backoff with
jitter, Retry-After honoured, never past the run's expires_at); once tokens have streamed,
never. When retries run out, last_error names the upstream host and its answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, poll, wait_for_status
from tests.support.server import AssistdServer

pytestmark = pytest.mark.timeout(120)


def ask(client: openai.OpenAI, question: str) -> Any:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": question}])
    return poll(client, thread.id, assistant_id=assistant(client).id)


def answer(client: openai.OpenAI, run: Any) -> str:
    return client.beta.threads.messages.list(run.thread_id).data[0].content[0].text.value  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 408, 409])
def test_a_failing_upstream_that_recovers_within_the_retries_completes_the_run(
        client: openai.OpenAI, upstream: FakeUpstream, status: int) -> None:
    upstream.on("flaky", [Reply.error(status), Reply.error(status), Reply.text("recovered at last")])
    run = ask(client, "flaky upstream")
    assert run.status == "completed", run.last_error
    assert answer(client, run) == "recovered at last"
    assert [r.outcome for r in upstream.requests] == ["error", "error", "completed"]


def test_a_connection_the_upstream_drops_unanswered_is_retried(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("unanswered", [Reply.refuse(), Reply.text("answered the second time")])
    run = ask(client, "unanswered at first")
    assert run.status == "completed" and answer(client, run) == "answered the second time"
    assert [r.reply_kind for r in upstream.requests] == ["refuse", "text"]


def test_an_unreachable_upstream_fails_the_run_after_the_retries(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("never reached", Reply.refuse())
    run = ask(client, "never reached")
    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "server_error"
    assert _host(upstream) in run.last_error.message and "could not be reached" in run.last_error.message
    assert len(upstream.requests) == 3


def test_retry_after_is_waited_for(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("busy", [Reply.error(429, retry_after="2"), Reply.text("after the wait")])
    run = ask(client, "busy upstream")
    assert run.status == "completed" and answer(client, run) == "after the wait"
    first, second = upstream.requests
    assert first.ended_at is not None and second.started_at - first.ended_at >= 2.0


def _host(upstream: FakeUpstream) -> str:
    return urlsplit(upstream.base_url).netloc


@pytest.mark.parametrize(("status", "code"), [(429, "rate_limit_exceeded"), (503, "server_error")])
def test_exhausted_retries_fail_the_run_naming_the_host_and_status(
        client: openai.OpenAI, server: AssistdServer, upstream: FakeUpstream, status: int, code: str) -> None:
    question = f"always {status}"
    upstream.on(question, Reply.error(status, "scripted refusal"))
    run = ask(client, question)
    assert run.status == "failed" and run.last_error is not None
    assert run.last_error.code == code
    assert _host(upstream) in run.last_error.message and str(status) in run.last_error.message
    assert len(upstream.requests) == 3  # the first try and ASSISTD_UPSTREAM_MAX_RETRIES (2) more
    # One line from the upstream client; the run's own end line (see test_operability) aside.
    lines = [line for line in server.log_text().splitlines()
             if run.last_error.message in line and "assistd.runs" not in line]
    assert len(lines) == 1, lines


def test_max_retries_is_a_setting(make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    srv = make_server(env={"ASSISTD_UPSTREAM_MAX_RETRIES": "0"})
    upstream.on("no second chance", [Reply.error(503), Reply.text("too late")])
    with srv.client() as client:
        run = ask(client, "no second chance")
    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "server_error"
    assert len(upstream.requests) == 1


def test_a_wait_past_the_runs_expiry_is_not_taken(
        make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    srv = make_server(env={"ASSISTD_RUN_EXPIRES_SECONDS": "20"})
    upstream.on("come back later", [Reply.error(503, retry_after="40"), Reply.text("too late")])
    with srv.client() as client:
        run = ask(client, "come back later")
    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "server_error"
    assert len(upstream.requests) == 1


def test_a_cancel_during_the_backoff_wait_ends_the_run_at_once(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("slow down", [Reply.error(429, retry_after="50"), Reply.text("never asked for")])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "slow down please"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant(client).id)
    upstream.wait_for_outcome(0, "error")
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    # Far sooner than the 50 s the upstream asked for.
    assert wait_for_status(client, thread.id, run.id, {"cancelled"}, timeout=15).status == "cancelled"
    assert len(upstream.requests) == 1


def test_a_stream_that_breaks_after_its_first_tokens_is_not_retried(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("breaks midway", [Reply.drop(after_chunks=2), Reply.text("a second try")])
    run = ask(client, "breaks midway")
    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "server_error"
    assert len(upstream.requests) == 1


def test_a_bad_request_is_not_retried(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("malformed", [Reply.error(400, "bad request"), Reply.text("never")])
    run = ask(client, "malformed request")
    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "invalid_prompt"
    assert len(upstream.requests) == 1
