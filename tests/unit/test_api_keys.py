"""API keys are compared in constant time, against every configured key."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import MutableMapping
from typing import Any

import pytest

from assistd.http.auth import ApiKeyMiddleware


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _status(middleware: ApiKeyMiddleware, key: str) -> int:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/assistants", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {key}".encode())]}
    asyncio.run(middleware(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize("key, status", [("key-one", 200), ("key-three", 200), ("key-nope", 401), ("key-on", 401)])
def test_every_configured_key_is_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch, key: str,
                                                              status: int) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    middleware = ApiKeyMiddleware(_app, keys=("key-one", "key-two", "key-three"))
    assert _status(middleware, key) == status
    # All keys, whichever matched: the time taken doesn't tell which one did.
    assert [a for a, _ in compared] == [b"key-one", b"key-two", b"key-three"]
    assert {b for _, b in compared} == {key.encode()}
