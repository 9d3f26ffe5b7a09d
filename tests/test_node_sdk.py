"""The official OpenAI Node SDK against assistd: a streamed run, and one cancelled mid-stream.

The client side is tests/node/stream_and_cancel.mjs (openai pinned in tests/node/package.json);
it prints one JSON line that this test checks. Needs `node` and `npm ci` in tests/node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.server import AssistdServer

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "stream_and_cancel.mjs"
FAST_TEXT = "Hello from the fake upstream"
# 1000 chunks, 50 ms apart: cancelled long before the end.
SLOW_TEXT = " ".join(f"slow{i}" for i in range(1000))
FAST_EVENTS = [
    "thread.run.created", "thread.run.queued", "thread.run.in_progress",
    "thread.run.step.created", "thread.message.created", "thread.message.delta",
    "thread.message.completed", "thread.run.step.completed", "thread.run.completed",
]
NODE = shutil.which("node")

# Decided at collection, so that no server is started for a test that cannot run.
pytestmark = [
    pytest.mark.skipif(NODE is None,
                       reason="node is not installed (the Node SDK test needs node >= 20)"),
    pytest.mark.skipif(not (NODE_DIR / "node_modules").is_dir(),
                       reason="tests/node/node_modules is missing: run `npm ci` in tests/node"),
]


def _in_order(events: list[str], expected: list[str]) -> bool:
    """`expected` is a subsequence of `events`."""
    remaining = iter(events)
    return all(name in remaining for name in expected)


def _run_script(server: AssistdServer) -> dict[str, Any]:
    assert NODE is not None
    env = {**os.environ, "ASSISTD_BASE_URL": server.base_url, "ASSISTD_API_KEY": server.api_key,
           "NODE_SDK_TIMEOUT_MS": "60000"}
    done = subprocess.run([NODE, str(SCRIPT)], cwd=NODE_DIR, env=env, capture_output=True,
                          text=True, timeout=75, check=False)
    assert done.returncode == 0, (
        f"node exited {done.returncode}\nstderr:\n{done.stderr}\nstdout:\n{done.stdout}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{done.stdout}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


@pytest.mark.timeout(90)
def test_node_sdk_streams_a_run_then_cancels_one_mid_stream(
    server: AssistdServer, upstream: FakeUpstream
) -> None:
    upstream.on("NODE-FAST", Reply.text(FAST_TEXT))
    upstream.on("NODE-SLOW", Reply.text(SLOW_TEXT, chunk_delay=0.05))

    result = _run_script(server)

    fast = result["fast"]
    assert fast["text"] == FAST_TEXT
    # The SDK's own accumulation of message.created + deltas: each delta must carry only what is new.
    assert fast["snapshot_text"] == FAST_TEXT
    assert fast["status"] == "completed"
    assert fast["events"][0] == "thread.run.created", fast["events"]
    assert fast["events"][-1] == "thread.run.completed", fast["events"]
    assert _in_order(fast["events"], FAST_EVENTS), fast["events"]
    upstream.wait_for_outcome("NODE-FAST", "completed", timeout=5)

    slow = result["slow"]
    assert slow["cancel_status"] in ("cancelling", "cancelled")
    assert "thread.run.cancelled" in slow["events"], slow["events"]
    assert slow["events"][-1] == "thread.run.cancelled", slow["events"]
    assert _in_order(slow["events"], ["thread.message.incomplete", "thread.run.cancelled"]), (
        slow["events"])
    assert slow["final_status"] == "cancelled"
    assert slow["message_status"] == "incomplete"
    assert slow["incomplete_reason"] == "run_cancelled"
    partial = slow["partial_text"]
    assert partial, "the cancelled run kept no text"
    assert SLOW_TEXT.startswith(partial) and len(partial) < len(SLOW_TEXT), partial
    assert partial.startswith(slow["streamed_text_at_cancel"]), (
        partial, slow["streamed_text_at_cancel"])
    upstream.wait_for_outcome("NODE-SLOW", "client_closed", timeout=5)
