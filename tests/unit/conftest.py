"""Unit-test fixtures: a fresh database on each configured backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS
from tests.support.server import drop_postgres_database, fresh_postgres_url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL no other test uses: a file in the test's tmp dir, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'unit.db'}"
        return
    url = fresh_postgres_url()
    yield url
    drop_postgres_database(url)
