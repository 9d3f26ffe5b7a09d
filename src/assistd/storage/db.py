"""A small async database interface with SQLite and PostgreSQL implementations.

SQL is written once with `:name` parameters; the PostgreSQL side rewrites them to `$n`.
SQLite has one writer at a time (transactions are `BEGIN IMMEDIATE`, WAL mode, one lock in
the process) and reads on the event loop's thread, as one writer per SQLite file is what
SQLite does best. Short transactions (`transaction(inline=True)`: a run's changes, its
partial text) are written on the loop's thread too; long ones (ingestion, deletes) on a
thread of their own.
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

    def transaction(self, inline: bool = False) -> Any: ...
    async def write_one(self, sql: str, **params: Any) -> Row | None: ...
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


class _InlineWriter:
    """Short write transactions on the event loop's own thread, through a plain sqlite3
    connection.

    Through the writer's thread, each statement of a transaction is a hop to that thread
    and back, and the way back waits for the event loop: with 100 runs generating, a
    4-statement cancel held the write lock for up to 118 ms while taking about a
    millisecond of work, and every write behind it waited as long. Inline, a transaction
    that doesn't await anything else holds the lock for its own work only.

    It never checkpoints the WAL itself (a checkpoint syncs the disk, on the loop's thread):
    SQLiteDatabase checkpoints from a thread instead.
    """

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        for pragma in ("synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON", "wal_autocheckpoint=0"):
            self.conn.execute(f"PRAGMA {pragma}")

    async def fetchone(self, sql: str, **params: Any) -> Row | None:
        row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    async def fetchall(self, sql: str, **params: Any) -> list[Row]:
        return [dict(row) for row in self.conn.execute(sql, params).fetchall()]

    async def execute(self, sql: str, **params: Any) -> int:
        return self.conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        self.conn.executemany(sql, rows)


CHECKPOINT_SECONDS = 1.0  # how often the WAL is checkpointed after inline writes


class SQLiteDatabase:
    dialect = "sqlite"
    pgvector = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: _SQLiteConn | None = None
        self._inline: _InlineWriter | None = None
        self._reader: _InlineReader | None = None
        self._write_lock = asyncio.Lock()
        self._all: list[aiosqlite.Connection] = []
        self._inline_commits = 0  # since the last checkpoint
        self._checkpointer: asyncio.Task[None] | None = None

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
        self._inline = _InlineWriter(self.path)
        self._reader = _InlineReader(self.path)

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        for conn in self._all:
            await conn.close()
        self._all.clear()
        for inline in (self._inline, self._reader):
            if inline is not None:
                inline.conn.close()

    @property
    def writer(self) -> _SQLiteConn:
        assert self._writer is not None, "database not connected"
        return self._writer

    @asynccontextmanager
    async def transaction(self, inline: bool = False) -> AsyncIterator[_SQLiteConn | _InlineWriter]:
        """A write transaction. `inline`: on the event loop's thread, for a transaction whose
        statements are few and small (a run's status change, a message, a batch of partial
        texts); the others (ingestion, deletes of whole stores) go to the writer's thread."""
        if inline:
            async with self._inline_transaction() as tx:
                yield tx
            return
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

    @asynccontextmanager
    async def _inline_transaction(self) -> AsyncIterator[_InlineWriter]:
        assert self._inline is not None, "database not connected"
        conn = self._inline.conn
        async with contextlib.AsyncExitStack() as stack:
            with timed("write", "the sqlite writer"):
                await stack.enter_async_context(self._write_lock)
                conn.execute("BEGIN IMMEDIATE")
            held = held_since("the sqlite writer")
            try:
                yield self._inline
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
                self._committed_inline()
            finally:
                held.done()

    async def write_one(self, sql: str, **params: Any) -> Row | None:
        """One write statement, committed by itself; the row it returns (RETURNING)."""
        async with self._inline_transaction() as tx:
            return await tx.fetchone(sql, **params)

    def _committed_inline(self) -> None:
        self._inline_commits += 1
        if self._checkpointer is None or self._checkpointer.done():
            self._checkpointer = asyncio.create_task(self._checkpoint_later(), name="assistd-sqlite-checkpoint")

    async def _checkpoint_later(self) -> None:
        """Move the WAL's pages into the database file, on a thread (it syncs the disk), as
        SQLite's automatic checkpoint would after the inline writer's commits. PASSIVE: it
        waits for nobody, and writers don't wait for it."""
        await asyncio.sleep(CHECKPOINT_SECONDS)
        if self._inline_commits:
            self._inline_commits = 0
            with contextlib.suppress(sqlite3.Error):
                await asyncio.to_thread(_checkpoint, self.path)

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


def _checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()


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
            self.url, min_size=self._sizes[0], max_size=self._sizes[1], timeout=CONNECT_TIMEOUT_SECONDS,
            reset=_nothing_to_reset,
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
    async def transaction(self, inline: bool = False) -> AsyncIterator[_PGConn]:
        """A transaction on a pooled connection (`inline` is SQLite's distinction; asyncpg
        never leaves the event loop's thread)."""
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

    async def write_one(self, sql: str, **params: Any) -> Row | None:
        """One write statement, committed by itself (one round trip: no BEGIN, no COMMIT, no
        connection held between them while the event loop is busy); the row it returns."""
        async with self._connection() as pg:
            return await pg.fetchone(sql, **params)

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


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """A pooled connection is handed back as it is: assistd leaves no state on a session (its
    advisory locks are transaction-scoped, LISTEN has its own connection, nothing is SET), and
    asyncpg rolls back an open transaction before this. Its default reset sent four
    statements, a round trip, at every release: one more for every GET of a run."""


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
