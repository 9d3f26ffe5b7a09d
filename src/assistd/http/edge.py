"""What every request passes before its route: who may call, what it may send, how much.

- Without API keys (loopback only), the `Host` must name a loopback address or `localhost`, and a
  browser's `Origin`, when sent, too: a web page can neither rebind a name to 127.0.0.1 nor post
  to us from another site.
- A body sent to a JSON endpoint must say `application/json` (415 otherwise): a page can post
  `text/plain` across sites without asking, but not `application/json`.
- A JSON body is at most `max_body_bytes` (413); uploads have their own limit.
- A client that goes away mid-request is one log line, and an unexpected error answers 500
  without closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assistd.http import errors
from assistd.http.errors import ApiError, error_response

CLIENT_GONE = "assistd.client_gone"  # scope key: the client left before its request was whole
log = logging.getLogger("assistd.http")

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
UPLOAD_PATHS = frozenset({"/v1/files"})  # multipart, with their own size limit
# What a refused request's body may still send, read and dropped, before the answer.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 2.0


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body too large: the limit is {limit} bytes.",
                         code="request_too_large")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


@functools.lru_cache(maxsize=256)  # a client sends the same Host on every request
def is_loopback_name(host: str) -> bool:
    """`localhost`, a 127.0.0.0/8 address or ::1, with or without a port."""
    name = urlsplit("//" + host).hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _forbidden(what: str, value: str) -> ApiError:
    return ApiError(403, f"{what} {value!r} is not allowed: without ASSISTD_API_KEYS, assistd "
                    "serves only requests made to localhost or a loopback address.", code="forbidden_host")


def _origin_problem(scope: Scope) -> ApiError | None:
    host = _header(scope, b"host") or ""
    if not is_loopback_name(host):
        return _forbidden("Host", host)
    origin = _header(scope, b"origin")
    if origin is not None and not is_loopback_name(urlsplit(origin).netloc):
        return _forbidden("Origin", origin)
    return None


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length or "0").strip() not in ("", "0")


def _content_type_problem(scope: Scope) -> ApiError | None:
    if scope["method"] not in BODY_METHODS or scope["path"] in UPLOAD_PATHS or not _has_body(scope):
        return None
    sent = _header(scope, b"content-type") or ""
    if sent.split(";")[0].strip().lower() == "application/json":
        return None
    return ApiError(415, f"Unsupported content type: {sent!r}. This API method only accepts "
                    "'application/json' requests.", code="unsupported_media_type")


def _declared_length(scope: Scope) -> int | None:
    """The body's Content-Length, when the client sent one that is a number."""
    length = (_header(scope, b"content-length") or "").strip()
    return int(length) if length.isdigit() else None


def _length_problem(scope: Scope, limit: int) -> ApiError | None:
    length = _declared_length(scope)
    return BodyTooLarge(limit) if length is not None and length > limit else None


async def _drain(receive: Receive, more: bool = True) -> None:
    """Read and drop what is left of a refused request's body, within DRAIN_BYTES and
    DRAIN_SECONDS, before answering: closing with unread bytes makes the peer's kernel send a
    reset, and a client still sending would lose the answer (nginx's lingering close)."""
    dropped = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while more and dropped <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))
                more = bool(message.get("more_body", False))


def _drainable(scope: Scope) -> bool:
    length = _declared_length(scope)
    return _has_body(scope) and not (length is not None and length > DRAIN_BYTES)


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive`, raising BodyTooLarge once more than `limit` body bytes came (chunked bodies)."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                await _drain(receive, bool(message.get("more_body", False)))
                raise BodyTooLarge(limit)
        return message

    return receive_limited


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, loopback_only: bool, max_body_bytes: int) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = self._problem(scope)
        if problem is not None:
            if _drainable(scope):
                await _drain(receive)
            return await error_response(problem)(scope, receive, send)
        if scope["path"] not in UPLOAD_PATHS:
            receive = _limited(receive, self.max_body_bytes)
        await self._guarded(scope, receive, send)

    def _problem(self, scope: Scope) -> ApiError | None:
        if self.loopback_only and (problem := _origin_problem(scope)):
            return problem
        if scope["path"] in UPLOAD_PATHS:
            return None
        return _content_type_problem(scope) or _length_problem(scope, self.max_body_bytes)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_noting(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        except ClientDisconnect:  # the access line says so (one line, no traceback)
            scope[CLIENT_GONE] = True
        except Exception as exc:
            if started:
                raise  # a response half sent can't become an error: the server closes it
            # Answered here rather than by Starlette's outermost handler, which re-raises to
            # the server, and the server then closes the connection.
            response = await errors.unexpected_handler(Request(scope, receive), exc)
            await response(scope, receive, send)
