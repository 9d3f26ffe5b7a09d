"""Images in user messages, for upstreams that see: an `image_file` part reaches the upstream
as an `image_url` part holding a `data:` URL of the file's bytes, with the MIME type read from
the bytes themselves (a name or an upload's claimed type is not trusted).

A part naming a file that is not an image (PNG, JPEG, GIF or WebP, what OpenAI accepts), is of
another purpose, or is larger than MAX_IMAGE_BYTES is refused when the message is created.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from assistd.domain.errors import NotFound, invalid
from assistd.execution.runtime import Runtime
from assistd.lifecycle.records import Message
from assistd.storage.files import FileStore

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # OpenAI's limit for one image given to a model
MAX_REQUEST_IMAGE_BYTES = 64 * 1024 * 1024  # images inlined into one upstream request, newest first
PURPOSES = ("vision", "assistants")
SIGNATURES = (  # (offset, bytes, MIME type)
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),  # after b"RIFF" and the size
)


def sniff(head: bytes) -> str | None:
    """The image type of a file from its first bytes, or None if it is none OpenAI accepts."""
    for offset, signature, mime in SIGNATURES:
        if head[offset:offset + len(signature)] == signature and (mime != "image/webp" or head[:4] == b"RIFF"):
            return mime
    return None


def image_file_ids(message: Mapping[str, Any]) -> list[str]:
    return [p["image_file"]["file_id"] for p in message.get("content") or [] if p.get("type") == "image_file"]


async def check_images(rt: Runtime, messages: Sequence[Mapping[str, Any]]) -> None:
    """Refuse (InvalidRequest) a message whose `image_file` parts don't name an image a model may see."""
    files = FileStore(rt.store.db, rt.settings.files_dir)
    for message in messages:
        for file_id in image_file_ids(message):
            await _check_image(files, file_id)


async def _check_image(files: FileStore, file_id: str) -> None:
    try:
        row = await files.get(file_id)
    except NotFound:
        raise invalid(f"Invalid 'content': no file found with id '{file_id}'.", "content") from None
    if row["purpose"] not in PURPOSES:
        raise invalid(f"Invalid 'content': file '{file_id}' has purpose '{row['purpose']}'; an image_file "
                      "part needs a file uploaded with purpose 'vision' or 'assistants'.", "content")
    if int(row["bytes"]) > MAX_IMAGE_BYTES:
        raise invalid(f"Invalid 'content': image file '{file_id}' is {row['bytes']} bytes; the limit is "
                      f"{MAX_IMAGE_BYTES} bytes.", "content")
    head = await asyncio.to_thread(_head, files.path(file_id))
    if sniff(head) is None:
        raise invalid(f"Invalid 'content': file '{file_id}' is not an image (PNG, JPEG, GIF or WebP).", "content")


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(16)


async def data_urls(files: FileStore, messages: Sequence[Message]) -> dict[str, str]:
    """`data:` URLs of the images the messages' `image_file` parts name, newest first until
    MAX_REQUEST_IMAGE_BYTES; a file deleted since, or past the budget, is left out."""
    urls: dict[str, str] = {}
    budget = MAX_REQUEST_IMAGE_BYTES
    for message in reversed([m for m in messages if m["role"] == "user"]):
        for file_id in image_file_ids(message):
            if file_id in urls:
                continue
            try:
                path = files.path(file_id)
            except ValueError:  # never a file of ours
                continue
            data = await asyncio.to_thread(_read_image, path, min(budget, MAX_IMAGE_BYTES))
            if data is None:
                continue
            budget -= len(data)
            urls[file_id] = f"data:{sniff(data[:16])};base64,{base64.b64encode(data).decode()}"
    return urls


def _read_image(path: Path, limit: int) -> bytes | None:
    """The file's bytes if it is an image of at most `limit` bytes."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit and sniff(data[:16]) else None
