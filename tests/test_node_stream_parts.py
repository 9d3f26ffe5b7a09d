"""The official Node SDK's AssistantStream renders what assistd streams: the chart of a
code_interpreter call reaches `imageFileDone`, `file_path` and `file_citation` annotations
reach `textDelta`, and the messages it builds from the deltas equal the retrieved ones.

The client side is tests/node/stream_parts.mjs; this test scripts the upstream, creates the
assistant and thread with the Python SDK, and checks the one JSON line the script prints.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import openai
import pytest

from tests.acceptance.test_file_search import searchable_assistant
from tests.acceptance.test_stream_fidelity import CHART_AND_FILE, CITED_ANSWER, CODE_ANSWER, _sandbox_problem
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant
from tests.support.server import AssistdServer
from tests.test_node_sdk import NODE, NODE_DIR
from tests.test_node_sdk import pytestmark as node_marks

SCRIPT = NODE_DIR / "stream_parts.mjs"
pytestmark = [*node_marks, pytest.mark.timeout(120)]


def stream_with_node(server: AssistdServer, thread_id: str, assistant_id: str) -> dict[str, Any]:
    assert NODE is not None
    env = {**os.environ, "ASSISTD_BASE_URL": server.base_url, "ASSISTD_API_KEY": server.api_key,
           "THREAD_ID": thread_id, "ASSISTANT_ID": assistant_id, "NODE_SDK_TIMEOUT_MS": "60000"}
    done = subprocess.run(["node", str(SCRIPT)], cwd=NODE_DIR, env=env, capture_output=True, text=True,
                          timeout=75, check=False)
    assert done.returncode == 0, f"node exited {done.returncode}\nstderr:\n{done.stderr}\nstdout:\n{done.stdout}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def assert_built_as_retrieved(result: dict[str, Any]) -> dict[str, Any]:
    """The assistant message Node built from the deltas, after checking it field by field."""
    [built] = [m for m in result["built"] if m["role"] == "assistant"]
    [retrieved] = [m for m in result["retrieved"] if m["id"] == built["id"]]
    for key in ("id", "thread_id", "role", "assistant_id", "run_id", "attachments", "metadata"):
        assert built[key] == retrieved[key], key
    assert len(built["content"]) == len(retrieved["content"])
    for part, want in zip(built["content"], retrieved["content"], strict=True):
        got = {k: v for k, v in part.items() if k != "index"}  # the SDK keeps the delta's index
        if want["type"] == "text":
            got["text"]["annotations"] = [{k: v for k, v in a.items() if k != "index"}
                                          for a in got["text"]["annotations"]]
        assert got == want
    return dict(retrieved)


def sent_annotations(result: dict[str, Any]) -> list[tuple[dict[str, Any], int, int]]:
    """(annotation, text length before its delta, after it), as textDelta saw them."""
    return [(a, d["length"] - len(d["value"]), d["length"]) for d in result["text_deltas"] for a in d["annotations"]]


@pytest.mark.skipif((problem := _sandbox_problem()) is not None, reason=f"cannot sandbox here: {problem}")
def test_node_stream_renders_a_chart_and_the_link_to_a_written_file(
        server: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("node chart", Reply.tool_calls([("code_interpreter", json.dumps({"code": CHART_AND_FILE}))]))
    upstream.enqueue(Reply.text(chunks=CODE_ANSWER))
    coder = assistant(client, tools=[{"type": "code_interpreter"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "node chart and file"}])

    result = stream_with_node(server, thread.id, coder.id)

    assert result["events"][-1] == "thread.run.completed", result["events"]
    message = assert_built_as_retrieved(result)
    assert [p["type"] for p in message["content"]] == ["image_file", "text"]
    assert result["images"] == [message["content"][0]["image_file"]["file_id"]]
    text = message["content"][1]["text"]
    sent = sent_annotations(result)
    assert [a["type"] for a, _, _ in sent] == ["file_path", "file_path"]
    (first, before, after), (last, before_last, after_last) = sent
    assert before <= first["end_index"] < after and text["value"][first["end_index"]] == ")"
    assert last["end_index"] == len(text["value"]) == before_last == after_last
    assert client.files.content(first["file_path"]["file_id"]).read() == b"x,y\n1,3\n"


def test_node_stream_renders_a_citation_when_its_marker_closes(
        server: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, ids = searchable_assistant(client)
    upstream.on("where do quokkas live", Reply.tool_calls([("file_search", '{"query": "marsupial Rottnest"}')]))
    upstream.on("Passages from the files", Reply.text(chunks=CITED_ANSWER))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "where do quokkas live"}])

    result = stream_with_node(server, thread.id, asst.id)

    message = assert_built_as_retrieved(result)
    [citation] = message["content"][0]["text"]["annotations"]
    assert citation["type"] == "file_citation" and citation["file_citation"]["file_id"] == ids[0]
    [(sent, before, after)] = sent_annotations(result)
    assert sent["text"] == "【0†quokka.txt】" and before < sent["end_index"] <= after
    assert result["images"] == []
