"""A quiet run stream sends SSE comment lines (ASSISTD_SSE_KEEPALIVE_SECONDS, 1 s here), so
proxies and clients with read timeouts keep it open: a slow upstream, a long code call, a
run waiting in `queued`. The official SDK ignores them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.acceptance.test_stream_fidelity import _sandbox_problem
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, wait_for_status
from tests.support.server import AssistdServer

pytestmark = pytest.mark.timeout(120)
KEEPALIVE = ": keep-alive"
FAST = {"ASSISTD_SSE_KEEPALIVE_SECONDS": "1"}


def raw_stream(server: AssistdServer, path: str, body: dict[str, object]) -> Iterator[str]:
    """The lines of a streamed POST, as a bare SSE client reads them (comments included)."""
    with httpx.stream("POST", f"{server.base_url}{path}", json={**body, "stream": True},
                      headers=server.headers, timeout=60) as response:
        assert response.status_code == 200
        yield from response.iter_lines()


def marks(lines: Iterator[str], until: str = "event: done") -> list[str]:
    """Event names and keep-alive comments, in order, up to `until`."""
    seen = []
    for line in lines:
        if line.startswith("event: ") or line == KEEPALIVE:
            seen.append(line)
        if line == until:
            break
    return seen


def between(seen: list[str], first: str, second: str) -> list[str]:
    return seen[seen.index(first) + 1:seen.index(second)]


def test_a_slow_upstream_gets_keepalives_and_the_sdk_ignores_them(
        make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    srv = make_server(env=FAST)
    upstream.on("slowly", Reply.text("first then later", chunk_delay=3))
    with srv.client() as client:
        asst = assistant(client)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "answer slowly"}])
        seen = marks(raw_stream(srv, f"/threads/{thread.id}/runs", {"assistant_id": asst.id}))
        deltas = [i for i, line in enumerate(seen) if line == "event: thread.message.delta"]
        assert KEEPALIVE in seen[deltas[0]:deltas[1]], seen  # 3 s between tokens
        assert seen[-2:] == ["event: thread.run.completed", "event: done"]

        again = client.beta.threads.create(messages=[{"role": "user", "content": "again slowly"}])
        with client.beta.threads.runs.stream(thread_id=again.id, assistant_id=asst.id) as stream:
            stream.until_done()
            text = "".join(m.content[0].text.value for m in stream.get_final_messages())  # type: ignore[union-attr]
        assert text == "first then later"


@pytest.mark.skipif((problem := _sandbox_problem()) is not None, reason=f"cannot sandbox here: {problem}")
def test_a_long_code_call_gets_keepalives(make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    srv = make_server(env=FAST)
    upstream.on("nap", Reply.tool_calls([("code_interpreter", json.dumps({"code": "import time; time.sleep(3)"}))]))
    upstream.enqueue(Reply.text("Rested."))
    with srv.client() as client:
        asst = assistant(client, tools=[{"type": "code_interpreter"}])
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "take a nap"}])
        seen = marks(raw_stream(srv, f"/threads/{thread.id}/runs", {"assistant_id": asst.id}))
    # The code runs after its input deltas, before the tool step completes.
    assert KEEPALIVE in between(seen, "event: thread.run.step.delta", "event: thread.run.step.completed"), seen
    assert seen[-2:] == ["event: thread.run.completed", "event: done"]


def test_a_queued_run_gets_keepalives(make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    srv = make_server(env={**FAST, "ASSISTD_WORKER_CONCURRENCY": "1"})
    upstream.on("hold the worker", Reply.hang())
    with srv.client() as client:
        asst = assistant(client)
        busy = client.beta.threads.create(messages=[{"role": "user", "content": "hold the worker"}])
        holder = client.beta.threads.runs.create(thread_id=busy.id, assistant_id=asst.id)
        upstream.wait_for_requests(1)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "wait your turn"}])
        lines = raw_stream(srv, f"/threads/{thread.id}/runs", {"assistant_id": asst.id})
        seen = marks(lines, until=KEEPALIVE)  # the run stays queued behind the one holding the worker
        assert seen[-3:] == ["event: thread.run.created", "event: thread.run.queued", KEEPALIVE]
        run = client.beta.threads.runs.list(thread.id).data[0]
        assert run.status == "queued"
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
        assert marks(lines)[-2:] == ["event: thread.run.cancelled", "event: done"]
        client.beta.threads.runs.cancel(holder.id, thread_id=busy.id)
        wait_for_status(client, busy.id, holder.id, {"cancelled"})
