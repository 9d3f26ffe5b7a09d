"""Image sniffing and how images count against prompt budgets."""

from __future__ import annotations

import pytest

from assistd.execution import prompt
from assistd.execution.vision import sniff


@pytest.mark.parametrize(("head", "mime"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
    (b"\xff\xd8\xff\xdb", "image/jpeg"),
    (b"GIF89a\x01\x00", "image/gif"),
    (b"GIF87a\x01\x00", "image/gif"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),  # a RIFF file, but sound
    (b"<svg xmlns=", None),  # OpenAI does not take SVG
    (b"", None),
])
def test_images_are_known_by_their_first_bytes(head: bytes, mime: str | None) -> None:
    assert sniff(head) == mime


def test_an_inlined_image_counts_a_fixed_number_of_tokens_not_its_url_length() -> None:
    small = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    large = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 400_000}}]}]
    assert prompt.estimate_tokens(small) == prompt.estimate_tokens(large)
    assert prompt.estimate_tokens(large) - prompt.estimate_tokens([{"role": "user", "content": [
        {"type": "text", "text": "hi"}]}]) == prompt.IMAGE_TOKENS
