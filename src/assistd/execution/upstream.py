"""The upstream: any OpenAI-compatible Chat Completions endpoint, always streamed.

Streaming is what lets a cancel stop generation at once: closing the response closes
the connection, and the upstream server sees the client go away.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import openai
from openai import _constants
from openai.types.chat import ChatCompletionChunk

from assistd.config import Settings

log = logging.getLogger("assistd.upstream")
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
BACKOFF_SECONDS = 0.5  # the first wait; it doubles with each retry, with full jitter
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 60.0  # a longer Retry-After is not waited for: the run fails


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


def retryable(exc: openai.APIError) -> bool:
    """A failure to connect, or an answer that says "try again" (before any streamed byte)."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUSES or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)  # APITimeoutError included


def retry_after(exc: openai.APIError) -> float | None:
    """The wait the upstream asked for (`retry-after-ms`, or `Retry-After` in seconds or as a date)."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        if (value := headers.get("retry-after")) is None:
            return None
        if value.strip().replace(".", "", 1).isdigit():
            return float(value)
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff(attempt: int, exc: openai.APIError) -> float:
    """Seconds to wait before retry number `attempt` (0-based): Retry-After when given,
    else exponential backoff with full jitter."""
    asked = retry_after(exc)
    if asked is not None:
        return asked
    return random.uniform(0, min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2 ** attempt))


def exhausted(exc: openai.APIError, host: str, attempts: int) -> UpstreamError:
    """The run's last_error once no retry is left: it names the upstream host and its answer."""
    if isinstance(exc, openai.APIStatusError):
        what, detail = f"answered {exc.status_code}", _detail(exc)
    else:  # the URL tells an operator exactly what was tried (never the key)
        what, detail = "could not be reached", f"{exc} ({_url(exc)})"
    code = "rate_limit_exceeded" if isinstance(exc, openai.RateLimitError) else "server_error"
    tries = "once" if attempts == 1 else f"{attempts} times"
    return UpstreamError(code, f"The upstream {host} {what} (tried {tries}): {detail}")


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.max_tokens_param = settings.upstream_max_tokens_param
        self.idle_timeout = settings.upstream_timeout
        self.max_retries = max(0, settings.upstream_max_retries)
        self.host = urlsplit(settings.upstream_base_url).netloc or settings.upstream_base_url
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
    async def stream(self, request: dict[str, Any], *,
                     deadline: float | None = None) -> AsyncIterator[AsyncIterator[ChatCompletionChunk]]:
        """Open a streamed completion; leaving the block closes the connection. Connecting is
        retried (see `connect`) until `deadline` (epoch seconds: the run's expires_at)."""
        stream = await self.connect(request, deadline)
        async with stream:
            yield _guarded(stream, self.idle_timeout)

    async def connect(self, request: dict[str, Any], deadline: float | None = None) -> Any:
        """Start the completion, retrying connection errors and 408/409/429/5xx answers (which
        come before any streamed byte) up to `max_retries` times, never waiting past
        `deadline`. Cancelling the task ends a wait at once."""
        attempt = 0
        while True:
            try:
                return await self.client.chat.completions.create(**request, stream=True)
            except openai.APIError as exc:
                if not retryable(exc):
                    raise classify(exc) from exc
                wait = backoff(attempt, exc)
                late = deadline is not None and time.time() + wait >= deadline
                if attempt >= self.max_retries or late or wait > MAX_RETRY_AFTER_SECONDS:
                    error = exhausted(exc, self.host, attempt + 1)
                    log.warning("%s", error.message)
                    raise error from exc
                attempt += 1
                await asyncio.sleep(wait)

    async def close(self) -> None:
        await self.client.close()


async def _guarded(stream: AsyncIterator[ChatCompletionChunk], idle: float) -> AsyncIterator[ChatCompletionChunk]:
    """The stream's chunks; it fails once `idle` seconds pass without a token.

    The HTTP read timeout alone counts bytes, and an upstream sending only keep-alive
    comments would then hold the run forever.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle
    chunks = aiter(stream)
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UpstreamError("server_error", f"The upstream model sent no tokens for {idle:g} seconds.") from None
        except Exception as exc:
            raise classify(exc) from exc
        if carries_tokens(chunk):
            deadline = loop.time() + idle
        yield chunk


def carries_tokens(chunk: ChatCompletionChunk) -> bool:
    """Whether the model produced something in this chunk (an empty delta is not progress)."""
    if chunk.usage is not None:
        return True
    for choice in chunk.choices:
        delta = choice.delta
        if choice.finish_reason or delta.content or delta.tool_calls or delta.refusal:
            return True
        extra = delta.model_extra or {}
        if extra.get("reasoning_content") or extra.get("reasoning"):  # reasoning models think first
            return True
    return False
