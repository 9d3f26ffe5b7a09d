"""The upstream: any OpenAI-compatible Chat Completions endpoint, always streamed.

Streaming is what lets a cancel stop generation at once: closing the response closes
the connection, and the upstream server sees the client go away.

The SDK sends the request (its status errors and connection errors are what `classify` and
the retries know), but the streamed body is read here: each `data:` event is parsed with
`json.loads` into a plain dict (`Chunk`). Building the SDK's pydantic chunk objects cost most
of the CPU of a busy process (thousands of chunks a second), which stalled the event loop.

The bytes come through aiohttp (the SDK's own `DefaultAioHttpClient`), not httpx's default
transport: a streamed chunk, each its own read, cost about 330 µs of CPU through httpcore's
layers and about 170 µs through aiohttp's C parser (bench/RESULTS.md, "upstream chunks").
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, Required, TypedDict, cast
from urllib.parse import urlsplit

import openai
from openai import _constants

from assistd.config import Settings

log = logging.getLogger("assistd.upstream")
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
BACKOFF_SECONDS = 0.5  # the first wait; it doubles with each retry, with full jitter
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 60.0  # a longer Retry-After is not waited for: the run fails
DRAIN_SECONDS = 0.1  # after [DONE], how long the rest of the body may take (to keep the connection)
EXCERPT_CHARS = 200  # of an unreadable event, quoted in the run's last_error
USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
EXTRA_CONNECTIONS = 16  # to the upstream, beyond one per run executing


class FunctionDelta(TypedDict, total=False):
    name: str | None
    arguments: str | None  # a piece of the JSON arguments


class ToolCallDelta(TypedDict, total=False):
    index: Required[int]  # which call of the completion the piece belongs to
    id: str | None
    type: str | None
    function: FunctionDelta | None


class ChunkDelta(TypedDict, total=False):
    role: str | None
    content: str | None
    refusal: str | None
    tool_calls: list[ToolCallDelta] | None
    reasoning_content: str | None  # what reasoning models think before answering (DeepSeek, vLLM)
    reasoning: str | None  # the same, by another name (OpenRouter, Ollama)


class ChunkChoice(TypedDict, total=False):
    index: int
    delta: Required[ChunkDelta]
    finish_reason: str | None


class ChunkUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Chunk(TypedDict, total=False):
    """One streamed `chat.completion.chunk`, as parsed JSON: only the fields assistd reads are
    described (and checked, see `_misshapen`); any others are there too, unread."""

    id: str
    model: str
    choices: list[ChunkChoice]
    usage: ChunkUsage | None


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
        # One connection per run executing at once, and room for the embeddings' requests:
        # aiohttp's own default (100) would make the 101st run wait for a connection.
        connections = settings.worker_concurrency + EXTRA_CONNECTIONS
        self.client = openai.AsyncOpenAI(
            base_url=settings.upstream_base_url,
            api_key=settings.upstream_api_key or "assistd-no-key",
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAioHttpClient(
                timeout=timeout,
                limits=limits_type(max_connections=connections, max_keepalive_connections=200),
            ),
        )

    @asynccontextmanager
    async def stream(self, request: dict[str, Any], *,
                     deadline: float | None = None) -> AsyncIterator[AsyncIterator[Chunk]]:
        """Open a streamed completion; leaving the block closes the connection. Connecting is
        retried (see `connect`) until `deadline` (epoch seconds: the run's expires_at)."""
        response = await self.connect(request, deadline)
        chunks = _chunks(response)
        guarded = _guarded(chunks, self.idle_timeout)
        try:
            yield guarded
        finally:
            await response.close()  # first: this is what stops the generation
            await guarded.aclose()
            await chunks.aclose()

    async def connect(self, request: dict[str, Any], deadline: float | None = None) -> openai.AsyncAPIResponse[Any]:
        """Start the completion, retrying connection errors and 408/409/429/5xx answers (which
        come before any streamed byte) up to `max_retries` times, never waiting past
        `deadline`. Cancelling the task ends a wait at once.

        The answer's status is checked (an error raises the SDK's APIStatusError) but its body
        is left unread, for `_chunks`; the caller closes it.
        """
        attempt = 0
        while True:
            opening = self.client.chat.completions.with_streaming_response.create(
                model=request["model"], messages=[], stream=True, extra_body=_fields(request))
            try:
                # Entering sends the request; closing the response is all its exit would do.
                response: openai.AsyncAPIResponse[Any] = await opening.__aenter__()
                return response
            except openai.APIError as raised:
                exc = _as_connection_error(raised)
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


def _fields(request: dict[str, Any]) -> dict[str, Any]:
    """The request's fields, sent as the SDK's `extra_body`, which it merges into the JSON as
    they are. Given as typed parameters, the SDK walks every message and part against its
    TypedDicts first (`maybe_transform`): a third of its cost per request, measured, for a
    request assistd already built as plain JSON."""
    return {key: value for key, value in request.items() if key != "model"}


def _as_connection_error(exc: openai.APIError) -> openai.APIError:
    """A refused connection or an unknown host, as the SDK says it with httpx: the aiohttp
    transport reports every failure to connect as a timeout ("Request timed out"), which
    would send an operator looking for a slow upstream instead of a missing one."""
    if not isinstance(exc, openai.APITimeoutError):
        return exc
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            error = openai.APIConnectionError(message=f"Connection error: {cause}", request=exc.request)
            error.__cause__ = exc.__cause__
            return error
        cause = cause.__cause__
    return exc


async def _chunks(response: openai.AsyncAPIResponse[Any]) -> AsyncGenerator[Chunk, None]:
    """The completion's chunks, until `data: [DONE]`; an error event or an unreadable one
    raises UpstreamError. A broken or stalled connection raises what the SDK's own stream
    raises (APIConnectionError, APITimeoutError), so a run's last_error reads as before.

    One generator from the socket's pieces to chunks: each layer of async iteration costs
    every chunk of every run."""
    raw = response.http_response
    library = sys.modules[type(raw).__module__.partition(".")[0]]  # the SDK's: httpx or httpx2
    # Undecoded when nothing is encoded: the decoding layer only copies the pieces.
    encoded = raw.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
    events = _Events()
    try:
        async with aclosing(raw.aiter_bytes() if encoded else raw.aiter_raw()) as body:
            async for received in body:
                for data in events.feed(received):
                    if data.startswith(b"[DONE]"):
                        await _drain(body)
                        return
                    yield _parsed(data)
    except library.TimeoutException as exc:
        raise openai.APITimeoutError(request=raw.request) from exc
    except library.RequestError as exc:
        raise openai.APIConnectionError(request=raw.request) from exc


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (the body's end, usually already received), so that an
    HTTP/1.1 connection goes back to the pool instead of being closed, as the SDK does; an
    upstream that keeps the body open is not waited for."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in body:
                pass
    except Exception:  # noqa: BLE001 - the completion is whole: what follows can't fail it
        return


class _Events:
    """Server-sent events: the data of each, from the body's pieces as they arrive.

    Lines end in LF, CRLF or CR, and only these (a JSON string may hold U+2028 or NEL
    unescaped, which `str.splitlines` would cut at); an event's `data:` lines are joined by LF
    and a blank line ends it; comments (keep-alives) and other fields are skipped.
    """

    def __init__(self) -> None:
        self.partial: list[bytes] = []  # the start of a line still arriving
        self.data: list[bytes] = []  # the current event's data lines

    def feed(self, received: bytes) -> list[bytes]:
        """The data of the events that `received` completes."""
        if b"\n" not in received and b"\r" not in received:
            self.partial.append(received)  # a long line arriving: don't split it again and again
            return []
        if self.partial:
            received = b"".join((*self.partial, received))
            self.partial.clear()
        lines = received.splitlines(keepends=True)
        if not lines[-1].endswith(b"\n"):  # unfinished, or a CR whose LF may be in the next piece
            self.partial.append(lines.pop())
        events = []
        for ended in lines:
            line = ended.rstrip(b"\r\n")
            if not line:
                if self.data:
                    events.append(self.data[0] if len(self.data) == 1 else b"\n".join(self.data))
                    self.data = []
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self.data.append(value[1:] if value.startswith(b" ") else value)
        return events


def _parsed(data: bytes) -> Chunk:
    """One event's data as a chunk; an error the upstream reports, or anything not shaped like
    a chunk, ends the stream with an UpstreamError rather than an exception deep in the run."""
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError included
        raise UpstreamError("server_error", f"The upstream sent a stream event that is not JSON ({exc}): "
                                            f"{_excerpt(data)}") from None
    if isinstance(chunk, dict) and chunk.get("error"):
        raise UpstreamError("server_error", f"The upstream failed mid-stream: {_error_message(chunk['error'])}")
    if (flaw := _misshapen(chunk)) is not None:
        raise UpstreamError("server_error", f"The upstream sent a malformed chunk ({flaw}): {_excerpt(data)}")
    return cast(Chunk, chunk)


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _error_message(error: object) -> str:
    """The message of an `{"error": …}` event: OpenAI's `{message, type, code}`, or a bare string."""
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) and message else json.dumps(error)[:EXCERPT_CHARS]


def _misshapen(chunk: object) -> str | None:
    """What makes a parsed event unreadable as a `Chunk` (None: nothing), checked here once so
    that a broken upstream fails the run with a message that names it, and the run's code may
    trust the fields it reads."""
    if not isinstance(chunk, dict):
        return "not a JSON object"
    usage = chunk.get("usage")
    if usage is not None and not (isinstance(usage, dict) and all(isinstance(usage.get(count), int)
                                                                  for count in USAGE_COUNTS)):
        return "usage without its token counts"
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        return "choices is not a list"
    for choice in choices:
        if (flaw := _misshapen_choice(choice)) is not None:
            return flaw
    return None


def _misshapen_choice(choice: object) -> str | None:
    if not isinstance(choice, dict) or not isinstance(delta := choice.get("delta"), dict):
        return "a choice without its delta object"
    if not (_text(choice.get("finish_reason")) and _text(delta.get("content"))):
        return "a finish_reason or content that is not a string"
    return _misshapen_calls(delta.get("tool_calls"))


def _misshapen_calls(calls: object) -> str | None:
    if calls is None:
        return None
    if not isinstance(calls, list):
        return "tool_calls is not a list"
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("index"), int):
            return "a tool call without its index"
        function = call.get("function")
        if function is not None and not (isinstance(function, dict) and _text(function.get("name"))
                                         and _text(function.get("arguments"))):
            return "a tool call's function without a string name and arguments"
    return None


def _text(value: object) -> bool:
    """A string, or nothing (null or absent)."""
    return value is None or isinstance(value, str)


class _IdleWatch:
    """Ends a read that waits past the idle deadline, as `asyncio.timeout` would, without a
    timer per chunk: progress only moves `deadline`, and the one timer, when it fires early,
    sets itself again for the deadline as it is then. A timeout context per chunk (made,
    scheduled and cancelled thousands of times a second) was a tenth of a busy worker's CPU.
    """

    def __init__(self, idle: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle = idle
        self.deadline = self.loop.time() + idle
        self.reader: asyncio.Task[Any] | None = None  # the task waiting for a chunk, if one is
        self.expired = False
        self.timer = self.loop.call_at(self.deadline, self._check)

    def progress(self) -> None:
        self.deadline = self.loop.time() + self.idle

    def _check(self) -> None:
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._check)
            return
        self.expired = True
        if self.reader is not None:
            self.reader.cancel()

    def stop(self) -> None:
        self.timer.cancel()


async def _guarded(stream: AsyncIterator[Chunk], idle: float) -> AsyncGenerator[Chunk, None]:
    """The stream's chunks; it fails once `idle` seconds pass without a token.

    The HTTP read timeout alone counts bytes, and an upstream sending only keep-alive
    comments would then hold the run forever.
    """
    chunks = aiter(stream)
    watch = _IdleWatch(idle)
    task = asyncio.current_task()
    try:
        while True:
            if watch.expired:
                raise UpstreamError("server_error", f"The upstream model sent no tokens for {idle:g} seconds.")
            cancelling = task.cancelling() if task is not None else 0
            watch.reader = task
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                # The watch's own cancel (and no other) becomes the idle error, as asyncio.timeout does.
                if watch.expired and task is not None and task.uncancel() <= cancelling:
                    raise UpstreamError("server_error",
                                        f"The upstream model sent no tokens for {idle:g} seconds.") from None
                raise
            except UpstreamError:
                raise
            except Exception as exc:
                raise classify(exc) from exc
            finally:
                watch.reader = None
            if carries_tokens(chunk):
                watch.progress()
            yield chunk
    finally:
        watch.stop()


def carries_tokens(chunk: Chunk) -> bool:
    """Whether the model produced something in this chunk (an empty delta is not progress)."""
    if chunk.get("usage") is not None:
        return True
    for choice in chunk.get("choices") or ():
        delta = choice["delta"]
        if choice.get("finish_reason") or delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
        if delta.get("reasoning_content") or delta.get("reasoning"):  # reasoning models think first
            return True
    return False
