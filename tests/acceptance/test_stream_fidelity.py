"""Streams that the SDKs' helpers render: every part of a message arrives in its deltas.

The official Python SDK's `AssistantEventHandler` builds the message from `thread.message.delta`
events; what it builds (before `thread.message.completed` replaces it) must equal the message
`messages.retrieve` returns, field by field: `image_file` parts from code_interpreter,
`file_path` and `file_citation` annotations.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta.threads import ImageFile, Message, MessageDelta, Text, TextDelta

from tests.acceptance.test_file_search import searchable_assistant
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant
from tests.support.spec import assert_matches_schema

pytestmark = pytest.mark.timeout(120)

CHART_AND_FILE = ("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\n"
                  "open('/mnt/data/data.csv', 'w').write('x,y\\n1,3\\n')")
# The path and the marker each arrive cut over several pieces; the second path ends the text.
CODE_ANSWER = ["Here is the chart and [the data](sandbox:/mnt/", "data/da", "ta.csv", ") to ",
               "download; also at sandbox:/mnt/data/data.csv"]
CITED_ANSWER = ["The quokka lives on Rottnest ", "Island 【0†quo", "kka.txt", "】 near Perth."]


def _sandbox_problem() -> str | None:
    try:
        from assistd.execution.code_interpreter import sandbox_problem
    except ImportError as exc:  # the sandbox's host-side parts are not installed
        return str(exc)
    return sandbox_problem()


class Recorder(AssistantEventHandler):
    """What a rendering client sees: events, image parts done, text deltas with their
    annotations, and the message as built from the deltas alone."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.images: list[str] = []
        self.deltas_seen: list[tuple[TextDelta, int]] = []  # (delta, length of the text after it)
        self.built: Message | None = None
        self.parts: list[tuple[int, str]] = []  # (index, type) of each content delta, in order

    def on_event(self, event: Any) -> None:
        self.events.append(event.event)
        if event.event == "thread.message.delta":
            assert_matches_schema(event.data, "MessageDeltaObject")

    def on_message_delta(self, delta: MessageDelta, snapshot: Message) -> None:
        self.built = snapshot.model_copy(deep=True)
        self.parts += [(part.index, part.type) for part in delta.content or []]

    def on_image_file_done(self, image_file: ImageFile) -> None:
        self.images.append(image_file.file_id)
        self.events.append("image_file_done")

    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas_seen.append((delta, len(snapshot.value)))


def stream(client: openai.OpenAI, thread_id: str, assistant_id: str) -> Recorder:
    recorder = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id,
                                         event_handler=recorder) as running:
        running.until_done()
    return recorder


def assert_same_message(built: Message | None, retrieved: Message) -> None:
    """The message built from the deltas is the retrieved one, part by part, field by field."""
    assert built is not None
    for key in ("id", "thread_id", "role", "assistant_id", "run_id", "attachments", "metadata"):
        assert getattr(built, key) == getattr(retrieved, key), key
    assert len(built.content) == len(retrieved.content), (built.content, retrieved.content)
    for got, want in zip(built.content, retrieved.content, strict=True):
        assert got.type == want.type
        if want.type == "image_file":
            assert got.image_file.file_id == want.image_file.file_id  # type: ignore[union-attr]
            continue
        got_text, want_text = got.text, want.text  # type: ignore[union-attr]
        assert got_text.value == want_text.value
        assert [_annotation(a) for a in got_text.annotations] == [_annotation(a) for a in want_text.annotations]


def _annotation(annotation: Any) -> dict[str, Any]:
    data: dict[str, Any] = annotation.model_dump(exclude_none=True)
    data.pop("index", None)  # the SDK keeps the delta's list index on what it built
    return data


def annotated_deltas(recorder: Recorder) -> list[tuple[Any, int, int]]:
    """(annotation, text length before its delta, after it) for each annotation sent."""
    found = []
    for delta, after in recorder.deltas_seen:
        before = after - len(delta.value or "")
        found += [(a, before, after) for a in delta.annotations or []]
    return found


@pytest.mark.skipif((problem := _sandbox_problem()) is not None, reason=f"cannot sandbox here: {problem}")
def test_a_chart_and_a_written_file_reach_the_stream_helpers_as_on_openai(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("chart and file", Reply.tool_calls([("code_interpreter", json.dumps({"code": CHART_AND_FILE}))]))
    upstream.enqueue(Reply.text(chunks=CODE_ANSWER))
    coder = assistant(client, tools=[{"type": "code_interpreter"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "chart and file please"}])

    recorder = stream(client, thread.id, coder.id)

    assert recorder.events[-1] == "thread.run.completed", recorder.events
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert [p.type for p in message.content] == ["image_file", "text"]
    assert_same_message(recorder.built, message)
    image_id = message.content[0].image_file.file_id  # type: ignore[union-attr]
    assert recorder.images == [image_id]
    assert client.files.content(image_id).read()[:8] == b"\x89PNG\r\n\x1a\n"
    # The image arrives in its own delta at index 0, before any text (which is at index 1).
    assert recorder.parts[0] == (0, "image_file") and set(recorder.parts[1:]) == {(1, "text")}
    assert recorder.events.index("image_file_done") < recorder.events.index("thread.message.completed")

    text = message.content[1].text  # type: ignore[union-attr]
    paths = [a for a in text.annotations if a.type == "file_path"]
    assert [a.text for a in paths] == ["sandbox:/mnt/data/data.csv"] * 2
    assert client.files.content(paths[0].file_path.file_id).read() == b"x,y\n1,3\n"  # type: ignore[union-attr]
    sent = annotated_deltas(recorder)
    assert [a.type for a, _, _ in sent] == ["file_path", "file_path"]
    (first, before, after), (last, before_last, after_last) = sent
    # Sent in the delta that completes the path (the one bringing the ")" after it) ...
    assert before <= first.end_index < after and text.value[first.end_index] == ")"
    # ... and a path that ends the text in the last delta, which adds nothing to the text.
    assert last.end_index == len(text.value) == before_last == after_last
    for annotation, _, _ in sent:
        assert text.value[annotation.start_index:annotation.end_index] == annotation.text


def test_a_citation_arrives_in_the_delta_that_closes_its_marker(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    asst, ids = searchable_assistant(client)
    upstream.on("where do quokkas live", Reply.tool_calls([("file_search", '{"query": "marsupial Rottnest"}')]))
    upstream.on("Passages from the files", Reply.text(chunks=CITED_ANSWER))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "where do quokkas live"}])

    recorder = stream(client, thread.id, asst.id)

    message = client.beta.threads.messages.retrieve(
        client.beta.threads.messages.list(thread.id).data[0].id, thread_id=thread.id)
    assert_same_message(recorder.built, message)
    [citation] = message.content[0].text.annotations  # type: ignore[union-attr]
    assert citation.type == "file_citation" and citation.file_citation.file_id == ids[0]  # type: ignore[union-attr]
    [(sent, before, after)] = annotated_deltas(recorder)
    assert sent.text == "【0†quokka.txt】" and sent.start_index == citation.start_index
    assert before < sent.end_index <= after  # the delta that brought its closing 】
    assert recorder.images == []
