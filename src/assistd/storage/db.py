"""A small async database interface with SQLite and PostgreSQL implementations.

SQL is written once with `:name` parameters; the PostgreSQL side rewrites them to `$n`.
SQLite has one writer connection (transactions are `BEGIN IMMEDIATE`, WAL mode) and a
few reader connections, as one writer per SQLite file is what SQLite does best.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

from assistd.storage.write_wait import held_since, timed

Row = dict[str, Any]
WRITE_RESERVE = 4  # PostgreSQL connections of the pool that reads outside a transaction leave to writes
_PARAM = re.compile(r"(?<!:):([a-zA-Z_][a-zA-Z0-9_]*)")
CONNECT_TIMEOUT_SECONDS = 10.0  # a server that accepts TCP but never answers must not hang a request


class DatabaseUnavailable(Exception):
    """The database can't be reached (down, restarting, unreachable, out of connections):
    the same request may succeed a few seconds later."""


class Executor(Protocol):
    async def fetchone(self, sql: str, **params: Any) -> Row | None: ...
    async def fetchall(self, sql: str, **params: Any) -> list[Row]: ...
    async def execute(self, sql: str, **params: Any) -> int: ...


class Database(Executor, Protocol):
    dialect: str

    def transaction(self) -> Any: ...
    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def executescript(self, sql: str) -> None: ...


def expand_in(sql: str, name: str, values: Sequence[Any], params: dict[str, Any]) -> str:
    """Replace `:name` (inside `IN (:name)`) by one parameter per value."""
    keys = [f"{name}_{i}" for i in range(len(values))]
    params.update(zip(keys, values, strict=True))
    return sql.replace(f":{name}", ", ".join(f":{k}" for k in keys))


# ---------------------------------------------------------------- SQLite


class _SQLiteConn:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def fetchone(self, sql: str, **params: Any) -> Row | None:
        rows = await self.conn.execute_fetchall(sql, params)
        for row in rows:
            return dict(row)
        return None

    async def fetchall(self, sql: str, **params: Any) -> list[Row]:
        return [dict(row) for row in await self.conn.execute_fetchall(sql, params)]

    async def execute(self, sql: str, **params: Any) -> int:
        cursor = await self.conn.execute(sql, params)
        count = cursor.rowcount
        await cursor.close()
        return count

    async def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        """One statement for many parameter sets (in a transaction: many rows in one go)."""
        await self.conn.executemany(sql, rows)


class _InlineReader:
    """Reads run on the event loop's own thread, through a plain sqlite3 connection.

    An indexed read from a WAL database takes microseconds — less than handing it to a
    thread and back — and WAL readers never wait for the writer.
    """

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.execute("PRAGMA query_only=ON")

    async def fetchone(self, sql: str, **params: Any) -> Row | None:
        row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    async def fetchall(self, sql: str, **params: Any) -> list[Row]:
        return [dict(row) for row in self.conn.execute(sql, params).fetchall()]


class SQLiteDatabase:
    dialect = "sqlite"
    pgvector = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: _SQLiteConn | None = None
        self._reader: _InlineReader | None = None
        self._write_lock = asyncio.Lock()
        self._all: list[aiosqlite.Connection] = []

    async def _open(self) -> _SQLiteConn:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA busy_timeout=10000")
        await conn.execute("PRAGMA foreign_keys=ON")
        self._all.append(conn)
        return _SQLiteConn(conn)

    async def connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._open()
        self._reader = _InlineReader(self.path)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        if self._reader is not None:
            self._reader.conn.close()

    @property
    def writer(self) -> _SQLiteConn:
        assert self._writer is not None, "database not connected"
        return self._writer

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SQLiteConn]:
        async with contextlib.AsyncExitStack() as stack:
            with timed("write", "the sqlite writer"):
                await stack.enter_async_context(self._write_lock)
                await self.writer.conn.execute("BEGIN IMMEDIATE")
            held = held_since("the sqlite writer")
            try:
                yield self.writer
            except BaseException:
                await asyncio.shield(self.writer.conn.execute("ROLLBACK"))
                raise
            else:
                await asyncio.shield(self.writer.conn.execute("COMMIT"))
            finally:
                held.done()

    @property
    def reader(self) -> _InlineReader:
        assert self._reader is not None, "database not connected"
        return self._reader

    async def fetchone(self, sql: str, **params: Any) -> Row | None:
        return await self.reader.fetchone(sql, **params)

    async def fetchall(self, sql: str, **params: Any) -> list[Row]:
        return await self.reader.fetchall(sql, **params)

    async def execute(self, sql: str, **params: Any) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, **params)

    async def executescript(self, sql: str) -> None:
        async with self._write_lock:
            await self.writer.conn.executescript(sql)


# ---------------------------------------------------------------- PostgreSQL

# Errors that say the server is out of reach, not that a statement was wrong. (TimeoutError,
# a connect that got no answer, is an OSError.)
_UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,  # includes a connection lost mid-statement
    asyncpg.CannotConnectNowError,  # starting up, or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.InterfaceError):  # asyncpg's word for a connection it found closed
        return "closed" in str(exc)
    return isinstance(exc, _UNREACHABLE)


@contextmanager
def _reaching() -> Iterator[None]:
    """Turn the driver's ways of saying "the server is gone" into DatabaseUnavailable."""
    try:
        yield
    except Exception as exc:
        if _unreachable(exc):
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise


def _to_dollar(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    names: list[str] = []

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM.sub(repl, sql), [params[n] for n in names]


class _PGConn:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetchone(self, sql: str, **params: Any) -> Row | None:
        text, args = _to_dollar(sql, params)
        with _reaching():
            row = await self.conn.fetchrow(text, *args)
        return dict(row) if row is not None else None

    async def fetchall(self, sql: str, **params: Any) -> list[Row]:
        text, args = _to_dollar(sql, params)
        with _reaching():
            return [dict(r) for r in await self.conn.fetch(text, *args)]

    async def execute(self, sql: str, **params: Any) -> int:
        text, args = _to_dollar(sql, params)
        with _reaching():
            status: str = await self.conn.execute(text, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        """One statement for many parameter sets (in a transaction: many rows in one go)."""
        if rows:
            text, _ = _to_dollar(sql, rows[0])
            with _reaching():
                await self.conn.executemany(text, [_to_dollar(sql, row)[1] for row in rows])


class PostgresDatabase:
    dialect = "postgresql"
    pgvector = False  # the `vector` extension is there and chunks have an `embedding_vec` column

    def __init__(self, url: str, min_size: int = 2, max_size: int = 20) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._sizes = (min_size, max_size)
        # Reads (GET polling) may take all but a few connections: writes, a cancel's among
        # them, always find one instead of queueing behind a crowd of polls.
        self._reads = asyncio.Semaphore(max(1, max_size - WRITE_RESERVE))

    async def connect(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url, min_size=self._sizes[0], max_size=self._sizes[1], timeout=CONNECT_TIMEOUT_SECONDS
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "database not connected"
        return self._pool

    @asynccontextmanager
    async def _connection(self, kind: str = "write") -> AsyncIterator[_PGConn]:
        """A pooled connection, its wait timed (storage/write_wait). Reads outside a transaction
        leave WRITE_RESERVE connections to writes, so heavy polling can't starve a cancel. Only
        the driver's own failures become DatabaseUnavailable (an OSError of the caller's, a full
        disk say, stays what it is)."""
        async with contextlib.AsyncExitStack() as stack:
            with timed(kind, "a postgresql connection"):
                if kind == "read":
                    await stack.enter_async_context(self._reads)
                with _reaching():
                    conn = await self.pool.acquire()
            try:
                yield _PGConn(conn)
            finally:
                with _reaching():
                    await self.pool.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PGConn]:
        async with self._connection() as pg:
            held = held_since("a postgresql connection")
            try:
                tx = pg.conn.transaction()
                with _reaching():
                    await tx.start()
                try:
                    yield pg
                except BaseException:
                    await _roll_back(tx)
                    raise
                with _reaching():
                    await tx.commit()
            finally:
                held.done()

    async def fetchone(self, sql: str, **params: Any) -> Row | None:
        async with self._connection("read") as pg:
            return await pg.fetchone(sql, **params)

    async def fetchall(self, sql: str, **params: Any) -> list[Row]:
        async with self._connection("read") as pg:
            return await pg.fetchall(sql, **params)

    async def execute(self, sql: str, **params: Any) -> int:
        async with self._connection() as pg:
            return await pg.execute(sql, **params)

    async def executescript(self, sql: str) -> None:
        async with self._connection() as pg:
            with _reaching():
                await pg.conn.execute(sql)


async def _roll_back(tx: Any) -> None:
    """Roll back after a failure; on a lost connection there is nothing to roll back, and
    the failure that got us here is the one to report."""
    try:
        await tx.rollback()
    except Exception as exc:
        if not _unreachable(exc):
            raise


def open_database(url: str, pool_size: int = 20) -> SQLiteDatabase | PostgresDatabase:
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, min_size=min(2, pool_size), max_size=pool_size)
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(Path(url.removeprefix("sqlite:///")))
    raise SystemExit(f"ASSISTD_DATABASE_URL must start with postgresql:// or sqlite:///, got {url!r}")
