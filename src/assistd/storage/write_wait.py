"""How long database writes wait before they may start, kept for operators.

A write waits for its turn: on SQLite for the one writer (this process's write lock, then
`BEGIN IMMEDIATE`), on PostgreSQL for a pooled connection. Every wait is recorded;
`figures()` gives plain numbers for a metrics endpoint, and a wait of SLOW_SECONDS or more
is logged with what was waiting, since it delays whatever the write was for (a cancel, too).
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("assistd.db")
SLOW_SECONDS = 0.1


class WriteWaits:
    def __init__(self) -> None:
        self.count = 0
        self.total_seconds = 0.0
        self.max_seconds = 0.0
        self.slow = 0

    def record(self, seconds: float) -> None:
        self.count += 1
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)
        if seconds >= SLOW_SECONDS:
            self.slow += 1


WAITS = WriteWaits()


def caller() -> str:
    """The code that asked for the write: the first frame outside the database layer."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.endswith(("db.py", "contextlib.py", "write_wait.py"))):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    return f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})"


class timed:
    """`with timed("write", "the sqlite writer"):` around the wait for a database access's
    turn; only writes count in `figures()`, a slow read is logged too."""

    def __init__(self, kind: str, resource: str) -> None:
        self.kind = kind
        self.resource = resource
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        waited = time.monotonic() - self.start
        if self.kind == "write":
            WAITS.record(waited)
        if waited >= SLOW_SECONDS:
            log.warning("a database %s for %s waited %.0f ms for %s", self.kind, caller(), waited * 1000,
                        self.resource)


def figures() -> dict[str, float]:
    """`waits_total`, `wait_seconds_total`, `max_wait_seconds` and `slow_waits_total`
    (waits of SLOW_SECONDS or more) since the process started."""
    return {
        "waits_total": float(WAITS.count),
        "wait_seconds_total": WAITS.total_seconds,
        "max_wait_seconds": WAITS.max_seconds,
        "slow_waits_total": float(WAITS.slow),
    }


HELD_SLOW_SECONDS = 0.05


class held_since:
    """How long a transaction lasts: on SQLite it holds the one writer (every other write
    waits), on PostgreSQL its row locks and a pooled connection. A long one is logged with
    its caller."""

    def __init__(self, resource: str) -> None:
        self.start = time.monotonic()
        self.resource = resource
        self.caller = caller()

    def done(self) -> None:
        held = time.monotonic() - self.start
        if held >= HELD_SLOW_SECONDS:
            log.warning("a transaction of %s held %s for %.0f ms", self.caller, self.resource, held * 1000)
