"""Connection-level guards uvicorn lacks: header and body read timeouts, a cap on open connections.

uvicorn times out only idle keep-alive connections, so a client that sends half a request head
(or dribbles a body) holds its socket forever; enough of them use up the open-file limit and
nobody, not even `/healthz`, gets in. `GuardedProtocol` is uvicorn's httptools protocol with
three additions, in the spirit of nginx's `client_header_timeout` / `client_body_timeout`:

- the request head must arrive whole within `header_timeout` seconds of its first byte (or of
  the connection's start), and be at most `MAX_HEAD_BYTES`;
- while a request body is being read, `body_timeout` seconds may pass between two reads;
- past `max_connections` open connections, each new one closes the oldest that is idle or still
  sending its request (never one whose request is being answered), so new clients get in.

The timeouts are kept by one sweep over the server's connections, a few times per timeout,
not by a timer per connection: a request then costs two clock reads instead of arming and
cancelling timers at each phase (a tenth of a small request's CPU, measured). A slow client is
closed within a quarter of its timeout after it expires.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("assistd.http")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; the SDKs send well under 2 KiB
FD_RESERVE = 256  # open files kept for the database, uploads, the sandbox and logs
UNLIMITED_FILES = 1 << 20
CAP_LOG_EVERY = 10.0  # seconds between two log lines about closed connections

# Phases of a connection, in the order the cap closes them: idle first, then slow senders.
IDLE, HEAD, BODY, BUSY = 0, 1, 2, 3


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int


class _CapLog:
    """One log line per CAP_LOG_EVERY seconds at most, however many connections were closed."""

    closed = 0
    last = 0.0

    @classmethod
    def note(cls, reason: str) -> None:
        cls.closed += 1
        now = time.monotonic()
        if now - cls.last >= CAP_LOG_EVERY:
            log.warning("closed %d slow or idle connections (latest: %s)", cls.closed, reason)
            cls.closed, cls.last = 0, now


class GuardedProtocol(HttpToolsProtocol):
    limits = EdgeLimits(header_timeout=10.0, body_timeout=30.0, max_connections=1000)
    _sweep: asyncio.TimerHandle | None = None  # one per server: guarded_protocol makes its class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = HEAD
        self.phase_since = time.monotonic()
        self.last_read = self.phase_since
        self.head_bytes = 0

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter(HEAD)
        self._sweep_later()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        if self.phase == IDLE:
            self._enter(HEAD)
        super().data_received(data)
        if self.phase == HEAD:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._close(f"request head over {MAX_HEAD_BYTES} bytes")

    # ------------------------------------------------------------ parser callbacks

    def on_headers_complete(self) -> None:
        self._enter(BODY)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._enter(BUSY)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.phase == BODY:
            # Answered before its body arrived (an error): reading on would serve no one.
            self.transport.close()
            return
        self._enter(IDLE)
        super().on_response_complete()

    # ------------------------------------------------------------ timeouts

    def _enter(self, phase: int) -> None:
        self.phase, self.phase_since, self.head_bytes = phase, time.monotonic(), 0

    def _sweep_later(self) -> None:
        """Sweep the connections a few times per timeout while there are any."""
        cls = type(self)
        if cls._sweep is None:
            every = min(self.limits.header_timeout, self.limits.body_timeout) / 4
            cls._sweep = self.loop.call_later(every, self._sweep_all)

    def _sweep_all(self) -> None:
        type(self)._sweep = None
        now = time.monotonic()
        for conn in list(self.connections):
            if isinstance(conn, GuardedProtocol) and not conn.transport.is_closing():
                conn._check(now)
        if self.connections:
            self._sweep_later()

    def _check(self, now: float) -> None:
        if self.phase == HEAD and now - self.phase_since >= self.limits.header_timeout:
            self._close(f"request head not complete within {self.limits.header_timeout:g}s")
        elif self.phase == BODY:
            if self.flow.read_paused:  # paused by us, as the app is behind: not the client's fault
                self.last_read = now
            elif now - self.last_read >= self.limits.body_timeout:
                self._close(f"no request body data for {self.limits.body_timeout:g}s")

    def _close(self, reason: str) -> None:
        _CapLog.note(reason)
        self.transport.close()

    # ------------------------------------------------------------ the connection cap

    def _make_room(self) -> None:
        victim = _oldest_evictable(self.connections, exclude=self)
        if victim is None:
            self._close(f"connection cap {self.limits.max_connections} reached, all busy")
        else:
            victim._close(f"connection cap {self.limits.max_connections} reached")


def _oldest_evictable(connections: set[Any], exclude: GuardedProtocol) -> GuardedProtocol | None:
    best: GuardedProtocol | None = None
    for conn in connections:
        if conn is exclude or not isinstance(conn, GuardedProtocol) or conn.phase == BUSY:
            continue
        if conn.transport.is_closing():
            continue
        if best is None or (conn.phase, conn.phase_since) < (best.phase, best.phase_since):
            best = conn
    return best


def guarded_protocol(limits: EdgeLimits) -> type[GuardedProtocol]:
    """`GuardedProtocol` bound to these limits, for uvicorn's `http=` option."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (often 1024 → far more); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # an unlimited hard limit can exceed the kernel's
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def connection_cap(wanted: int, open_files: int) -> int:
    """The connection cap: as asked, but below the open-file limit with room for everything else."""
    return max(16, min(wanted, open_files - FD_RESERVE))


def server_config(app: Any, *, host: str, port: int, limits: EdgeLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration with the guarded protocol, after raising the open-file limit."""
    cap = connection_cap(limits.max_connections, raise_open_file_limit())
    if cap < limits.max_connections:
        log.warning("connection cap lowered to %d: the open-file limit leaves no room for %d",
                    cap, limits.max_connections)
    bound = EdgeLimits(limits.header_timeout, limits.body_timeout, cap)
    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(bound), **options)
