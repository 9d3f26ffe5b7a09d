"""Serves the console's static files at `/` and `/ui/…`, ahead of the API key check.

The pages are public and hold no data: everything they show comes from `/v1`, called with the
user's key. The files are read once at start; only those names are ever served.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# No inline script or style; images may be blob: (files fetched with the key) or data: URLs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file() and path.suffix in TYPES:
            files["/ui/" + path.relative_to(STATIC).as_posix()] = (path.read_bytes(), TYPES[path.suffix])
    files["/"] = files["/ui/index.html"]
    return files


class ConsoleMiddleware:
    """Answers GET/HEAD for the console's files; everything else goes on to the API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.files = _load()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.files.get(scope["path"]) if scope["type"] == "http" else None
        if found is None or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        content, media_type = found
        await Response(content, media_type=media_type, headers=HEADERS)(scope, receive, send)
