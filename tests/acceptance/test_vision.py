"""Vision input: a user's `image_file` parts reach the upstream as `image_url` parts holding a
`data:` URL with the type read from the bytes; `image_url` parts pass through; `detail` is
kept. A file that can't be an image a model sees is refused when the message is created."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, poll

MAX_IMAGE_BYTES = 20 * 1024 * 1024


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG (red pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"


def upload(client: openai.OpenAI, name: str, data: bytes, purpose: Any = "vision") -> str:
    return client.files.create(file=(name, data), purpose=purpose).id


def user_content(upstream: FakeUpstream, marker: str) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = upstream.requests_matching(marker)[0].body["messages"][-1]["content"]
    return content


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_image_files_reach_the_upstream_as_data_urls_with_their_real_type(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    image = png()
    misnamed = upload(client, "photo.jpg", image, "vision")  # the name lies; the bytes decide
    jpeg = upload(client, "scan.png", JPEG, "assistants")
    upstream.on("what is in these pictures", Reply.text("A red square."))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is in these pictures"},
        {"type": "image_file", "image_file": {"file_id": misnamed, "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_file", "image_file": {"file_id": jpeg}},
    ]}])
    run = poll(client, thread.id, assistant_id=assistant(client).id)
    assert run.status == "completed"
    assert user_content(upstream, "what is in these pictures") == [
        {"type": "text", "text": "what is in these pictures"},
        {"type": "image_url", "image_url": {"url": data_url("image/png", image), "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": data_url("image/jpeg", JPEG)}},  # no detail given
    ]
    stored = client.beta.threads.messages.list(thread.id, order="asc").data[0]
    assert [p.type for p in stored.content] == ["text", "image_file", "image_url", "image_file"]


def test_a_file_that_is_not_an_image_is_refused_when_the_message_is_created(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    text_file = upload(client, "notes.png", b"just words, not pixels\n", "assistants")
    part = [{"type": "image_file", "image_file": {"file_id": text_file}}]
    thread = client.beta.threads.create()
    asst = assistant(client)
    attempts: list[Callable[[], object]] = [
        lambda: client.beta.threads.messages.create(thread.id, role="user", content=part),  # type: ignore[arg-type]
        lambda: client.beta.threads.create(messages=[{"role": "user", "content": part}]),  # type: ignore[typeddict-item]
        lambda: client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id,
                                                additional_messages=[{"role": "user", "content": part}]),  # type: ignore[typeddict-item]
        lambda: client.beta.threads.create_and_run(assistant_id=asst.id, thread={  # type: ignore[call-overload]
            "messages": [{"role": "user", "content": part}]}),
    ]
    for attempt in attempts:
        with pytest.raises(openai.BadRequestError) as caught:
            attempt()
        assert caught.value.body["param"] == "content" and "not an image" in caught.value.body["message"]  # type: ignore[index]
    assert client.beta.threads.messages.list(thread.id).data == []
    assert client.beta.threads.runs.list(thread.id).data == []
    assert upstream.requests == []


@pytest.mark.parametrize(("purpose", "data", "why"), [
    ("batch", png(), "purpose 'batch'"),
    ("vision", b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_IMAGE_BYTES, f"limit is {MAX_IMAGE_BYTES} bytes"),
], ids=["wrong-purpose", "too-large"])
def test_an_image_of_another_purpose_or_too_large_is_refused(
        client: openai.OpenAI, upstream: FakeUpstream, purpose: str, data: bytes, why: str) -> None:
    file_id = upload(client, "image.png", data, purpose)
    thread = client.beta.threads.create()
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.messages.create(thread.id, role="user", content=[
            {"type": "image_file", "image_file": {"file_id": file_id}}])
    assert why in caught.value.body["message"]  # type: ignore[index]


def test_an_unknown_file_is_refused(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    thread = client.beta.threads.create()
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.messages.create(thread.id, role="user", content=[
            {"type": "image_file", "image_file": {"file_id": "file-doesnotexist"}}])
    assert caught.value.body["param"] == "content"  # type: ignore[index]
