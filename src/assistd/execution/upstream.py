"""The upstream: any OpenAI-compatible Chat Completions endpoint, always streamed.

Streaming is what lets a cancel stop generation at once: closing the response closes
the connection, and the upstream server sees the client go away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
from openai import _constants
from openai.types.chat import ChatCompletionChunk

from assistd.config import Settings


class UpstreamError(Exception):
    """An upstream failure, with the run `last_error.code` it maps to."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def classify(exc: BaseException) -> UpstreamError:
    if isinstance(exc, openai.RateLimitError):
        return UpstreamError("rate_limit_exceeded", f"Upstream rate limit: {_detail(exc)}")
    if isinstance(exc, openai.BadRequestError):
        return UpstreamError("invalid_prompt", f"Upstream rejected the request: {_detail(exc)}")
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamError("server_error", f"The upstream model timed out ({_url(exc)}).")
    if isinstance(exc, openai.APIStatusError):
        return UpstreamError("server_error", f"Upstream error {exc.status_code}: {_detail(exc)}")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError("server_error", f"Upstream connection failed ({_url(exc)}): {exc}")
    # Mid-stream transport errors arrive raw from the SDK's HTTP library (httpx or httpx2).
    return UpstreamError("server_error", f"Upstream stream broke: {type(exc).__name__}: {exc}")


def _url(exc: openai.APIError) -> str:
    """The URL that was tried, so an operator sees which upstream failed (never its key)."""
    request = getattr(exc, "request", None)
    return str(request.url) if request is not None else "unknown URL"


def _detail(exc: openai.APIError) -> str:
    return exc.message or type(exc).__name__


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.max_tokens_param = settings.upstream_max_tokens_param
        # The SDK's own HTTP library (httpx or httpx2, by SDK version) supplies these types.
        timeout_type = type(_constants.DEFAULT_TIMEOUT)
        limits_type = type(_constants.DEFAULT_CONNECTION_LIMITS)
        timeout = timeout_type(settings.upstream_timeout, connect=settings.upstream_connect_timeout)
        self.client = openai.AsyncOpenAI(
            base_url=settings.upstream_base_url,
            api_key=settings.upstream_api_key or "assistd-no-key",
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAsyncHttpxClient(
                timeout=timeout,
                limits=limits_type(max_connections=None, max_keepalive_connections=200),
            ),
        )

    @asynccontextmanager
    async def stream(self, request: dict[str, Any]) -> AsyncIterator[AsyncIterator[ChatCompletionChunk]]:
        """Open a streamed completion; leaving the block closes the connection."""
        try:
            stream = await self.client.chat.completions.create(**request, stream=True)
        except openai.APIError as exc:
            raise classify(exc) from exc
        async with stream:
            yield _guarded(stream)

    async def close(self) -> None:
        await self.client.close()


async def _guarded(stream: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
    try:
        async for chunk in stream:
            yield chunk
    except Exception as exc:
        raise classify(exc) from exc
