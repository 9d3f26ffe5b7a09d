"""Fixtures: the fake upstream, and real assistd servers on each configured backend.

ASSISTD_TEST_BACKENDS (default "sqlite,postgresql") picks the backends; every test that
uses `server`, `client` or `make_server` runs once per backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.server import AssistdServer, drop_postgres_database, fresh_postgres_url

BACKENDS = [b.strip() for b in os.environ.get("ASSISTD_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def session_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def upstream(session_upstream: FakeUpstream) -> FakeUpstream:
    session_upstream.reset()
    return session_upstream


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Databases:
    """Fresh PostgreSQL databases handed out during the session, dropped at its end."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def new(self, backend: str) -> str:
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
    except Exception:
        server.stop()
        raise


@pytest.fixture(scope="session")
def server(backend: str, session_upstream: FakeUpstream, databases: Databases) -> Iterator[AssistdServer]:
    srv = _started(AssistdServer(session_upstream.base_url, database_url=databases.new(backend)))
    yield srv
    srv.stop()


@pytest.fixture
def client(server: AssistdServer, upstream: FakeUpstream) -> openai.OpenAI:
    return server.client()


@pytest.fixture
def make_server(
    backend: str, upstream: FakeUpstream, databases: Databases
) -> Iterator[Callable[..., AssistdServer]]:
    """Start a dedicated server (own database) with extra settings; stopped after the test."""
    started: list[AssistdServer] = []

    def make(env: dict[str, str] | None = None) -> AssistdServer:
        srv = _started(AssistdServer(upstream.base_url, database_url=databases.new(backend), env=env))
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop(timeout=15)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """On failure, attach the tail of each involved server's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        srv = item.funcargs.get("server") if hasattr(item, "funcargs") else None
        if isinstance(srv, AssistdServer):
            report.sections.append(("assistd log", srv.log_tail()))
