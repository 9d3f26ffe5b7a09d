"""Start a real `assistd serve` process for a test, on SQLite or a fresh PostgreSQL database.

    srv = AssistdServer(upstream.base_url, database_url=fresh_postgres_url()).start()
    client = srv.client()          # openai.OpenAI pointed at it, max_retries=0
    srv.kill(); srv.start()        # same port, same data: a crash and a restart
    srv.stop()                     # SIGTERM, then SIGKILL after `timeout`

`role` picks the process: "serve" (HTTP and a worker, the default), "api" (`serve --no-worker`)
or "worker" (`assistd worker`: no HTTP; ready once its log says so).

The process's stdout and stderr go to `log_path` (in its data dir); `log_tail()` reads the end.
Nothing here imports assistd: it only runs `python -m assistd`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import openai

POSTGRES_ADMIN_URL = os.environ.get("ASSISTD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_API_KEY = "test"
ROLES = {"serve": ["serve"], "api": ["serve", "--no-worker"], "worker": ["worker"]}
WORKER_READY = "worker ready"


def free_port() -> int:
    """A port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- PostgreSQL


def _run_sync(coro: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, also from inside a running loop (an async test): then on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    import asyncpg  # only the PostgreSQL backend needs it

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pgvector_available() -> bool:
    """Whether the PostgreSQL server has the pgvector extension to offer."""
    found: list[bool] = []

    async def ask() -> None:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            found.append(bool(await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")))
        finally:
            await conn.close()

    _run_sync(ask())
    return found[0]


def fresh_postgres_url() -> str:
    """Create an empty database `assistd_t_<hex>` and return its URL."""
    name = "assistd_t_" + secrets.token_hex(6)
    _run_sync(_admin(f'CREATE DATABASE "{name}"'))
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    """Drop a database made by fresh_postgres_url(), even with connections still open to it."""
    name = url.rsplit("/", 1)[1]
    if not name.startswith("assistd_t_"):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    _run_sync(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------- the server process


def _inherited_env() -> dict[str, str]:
    # The developer's own ASSISTD_* settings must not leak into a test server;
    # ASSISTD_TEST_* are the harness's and stay.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ASSISTD_") or k.startswith("ASSISTD_TEST_")}


class AssistdServer:
    """One `assistd serve` subprocess; stop/kill/start again keep the same port and data."""

    def __init__(self, upstream_url: str, *, database_url: str = "", env: dict[str, str] | None = None,
                 data_dir: Path | None = None, api_key: str | None = None, role: str = "serve") -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}")
        self.role = role
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="assistd-test-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.data_dir / "server.log"
        self.env = {
            **_inherited_env(),
            "PYTHONUNBUFFERED": "1",  # so the log file is current when a test fails
            "ASSISTD_DATA_DIR": str(self.data_dir),
            "ASSISTD_UPSTREAM_BASE_URL": upstream_url,
            "ASSISTD_UPSTREAM_API_KEY": "upstream-key",
            "ASSISTD_DISK_RESERVE_MB": "1",  # not 64 MB of disk for each of a session's servers
            **({"ASSISTD_DATABASE_URL": database_url} if database_url else {}),
            **(env or {}),
        }
        keys = [k.strip() for k in self.env.get("ASSISTD_API_KEYS", "").split(",") if k.strip()]
        self.api_key = api_key or (keys[0] if keys else DEFAULT_API_KEY)
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What the SDK sends, for tests that speak raw HTTP."""
        return {"Authorization": f"Bearer {self.api_key}", "OpenAI-Beta": "assistants=v2"}

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sql(self, statement: str) -> None:
        """Run one SQL statement on the server's database (to age a row, say), as another client would."""
        url = self.env.get("ASSISTD_DATABASE_URL", "")
        if url.startswith(("postgresql://", "postgres://")):
            async def run() -> None:
                import asyncpg

                conn = await asyncpg.connect(url, timeout=10)
                try:
                    await conn.execute(statement)
                finally:
                    await conn.close()

            _run_sync(run())
            return
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.data_dir / "assistd.db", timeout=10)) as conn:
            conn.execute(statement)
            conn.commit()

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> Self:
        """Spawn the process and wait until GET /healthz answers 200."""
        if self.running:
            raise RuntimeError("assistd is already running")
        with self.log_path.open("ab") as log:
            log.write(f"---- start {time.strftime('%H:%M:%S')} ----\n".encode())
            log.flush()
            log_start = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "assistd", *self._args()],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            if self.role == "worker":
                self._wait_log(WORKER_READY, log_start, timeout)
            else:
                self._wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _args(self) -> list[str]:
        if self.role == "worker":
            return ROLES["worker"]
        return [*ROLES[self.role], "--host", "127.0.0.1", "--port", str(self.port)]

    def _wait_log(self, text: str, offset: int, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"assistd exited with {self.proc.returncode}:\n{self.log_tail()}")
            with self.log_path.open("rb") as log:
                log.seek(offset)
                if text.encode() in log.read():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"assistd did not log {text!r} within {timeout}s:\n{self.log_tail()}")

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"assistd exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if http.get(f"{self.root_url}/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                time.sleep(0.05)
        raise RuntimeError(f"assistd was not healthy within {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send `sig` and wait; SIGKILL if it outlives `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL: a crash, with no chance to clean up."""
        return self.stop(signal.SIGKILL, timeout=10)

    def restart(self, timeout: float = 30.0) -> Self:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------ clients and logs

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", self.api_key)
        kw.setdefault("timeout", 30.0)
        return openai.OpenAI(base_url=self.base_url, max_retries=0, **kw)

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        kw.setdefault("api_key", self.api_key)
        kw.setdefault("timeout", 30.0)
        return openai.AsyncOpenAI(base_url=self.base_url, max_retries=0, **kw)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
