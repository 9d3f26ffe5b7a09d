"""Bearer-key check, as a plain ASGI middleware so it costs next to nothing per request."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from assistd.http.errors import ApiError, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # /metrics asks for a key, as /v1 does


def _masked(key: str) -> str:
    return key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "****"


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        error = self._check(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"))
        if error is None:
            return await self.app(scope, receive, send)
        return await error_response(error)(scope, receive, send)

    def _known(self, key: bytes) -> bool:
        # Against every key, in constant time each: how long a comparison takes tells nothing
        # about which key (or how much of one) matched.
        found = False
        for known in self.keys:
            found |= hmac.compare_digest(known, key)
        return found

    def _check(self, header: str) -> ApiError | None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        if not self._known(key.strip().encode("latin-1")):
            return ApiError(401, f"Incorrect API key provided: {_masked(key.strip())}.", code="invalid_api_key")
        return None
