"""Fixtures: the fake upstream, and real assistd servers on each configured backend.

ASSISTD_TEST_BACKENDS (default "sqlite,postgresql") picks the backends; every test that uses
`server`, `client` or `make_server` runs once per backend. ASSISTD_TEST_TIMEOUT (seconds,
default 120) fails a test that runs longer; `@pytest.mark.timeout(s)` sets it per test.

Nothing here imports assistd: servers are subprocesses.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import openai
import pytest

# `python -m pytest` puts the repository root on sys.path, a bare `pytest` does not: make
# `tests.support` importable either way.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.fake_upstream import FakeUpstream
from tests.support.server import AssistdServer, drop_postgres_database, fresh_postgres_url

KNOWN_BACKENDS = ("sqlite", "postgresql")
BACKENDS = [b.strip() for b in os.environ.get("ASSISTD_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]
DEFAULT_TIMEOUT = float(os.environ.get("ASSISTD_TEST_TIMEOUT", "120"))

SERVERS = pytest.StashKey[list[AssistdServer]]()
# A test server stopped at a test's (or the session's) end may still be executing a run the test
# left hanging; it needn't wait the default 10 s for it. Tests of shutdown set their own.
QUICK_SHUTDOWN = {"ASSISTD_SHUTDOWN_GRACE_SECONDS": "1"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "timeout(seconds): fail the test if it runs longer (default ASSISTD_TEST_TIMEOUT)")
    unknown = set(BACKENDS) - set(KNOWN_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"ASSISTD_TEST_BACKENDS: unknown {sorted(unknown)}; use {KNOWN_BACKENDS}")


# ---------------------------------------------------------------- the fake upstream


@pytest.fixture(scope="session")
def session_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def upstream(session_upstream: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream with no rules, no queue and an empty log."""
    session_upstream.reset()
    return session_upstream


# ---------------------------------------------------------------- servers


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Databases:
    """Fresh PostgreSQL databases handed out during the session, dropped at its end."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def new(self, backend: str) -> str:
        """A database URL for `backend`; "" for SQLite (the server's file in its data dir)."""
        if backend == "sqlite":
            return ""
        url = fresh_postgres_url()
        self.urls.append(url)
        return url


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    dbs = Databases()
    yield dbs
    for url in dbs.urls:
        drop_postgres_database(url)


def _started(server: AssistdServer) -> AssistdServer:
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def server(backend: str, session_upstream: FakeUpstream, databases: Databases,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[AssistdServer]:
    """One server per backend for the whole session, on the session upstream."""
    data_dir = tmp_path_factory.mktemp(f"assistd-{backend}")
    srv = _started(AssistdServer(session_upstream.base_url, database_url=databases.new(backend), data_dir=data_dir,
                                 env=QUICK_SHUTDOWN))
    yield srv
    srv.stop()


@pytest.fixture
def client(server: AssistdServer, upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with server.client() as sdk:
        yield sdk


@pytest.fixture
def make_server(backend: str, upstream: FakeUpstream, databases: Databases, request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., AssistdServer]]:
    """Start a dedicated server (own data dir and database) with extra settings; stopped after the test."""
    started = request.node.stash.setdefault(SERVERS, [])

    def make(env: dict[str, str] | None = None, **kw: Any) -> AssistdServer:
        data_dir = tmp_path_factory.mktemp(f"assistd-{backend}-own")
        srv = AssistdServer(upstream.base_url, database_url=databases.new(backend), env={**QUICK_SHUTDOWN, **(env or {})},
                            data_dir=data_dir, **kw)
        started.append(srv)
        return _started(srv)

    yield make
    for srv in started:
        srv.stop(timeout=15)


# ---------------------------------------------------------------- reports and the timeout


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """On failure, attach the tail of each involved server's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown" or not report.failed:
        return
    own: list[AssistdServer] = item.stash.get(SERVERS, [])
    servers = list(own)
    shared = getattr(item, "funcargs", {}).get("server")
    if isinstance(shared, AssistdServer):
        servers.insert(0, shared)
    for srv in servers:
        report.sections.append((f"assistd log ({srv.log_path})", srv.log_tail()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A safeguard without plugins: SIGALRM fails a test that hangs, with every thread's stack."""
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker and marker.args else DEFAULT_TIMEOUT
    usable = seconds > 0 and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        raise TimeoutError(f"{item.nodeid} ran longer than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def pytest_report_header(config: pytest.Config) -> str:
    return f"assistd backends: {', '.join(BACKENDS)}; test timeout {DEFAULT_TIMEOUT:g}s; root {Path(__file__).parent}"
