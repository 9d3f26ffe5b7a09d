"""Start a real `assistd serve` process for a test, on SQLite or a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

POSTGRES_ADMIN_URL = os.environ.get("ASSISTD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh_postgres_url() -> str:
    """Create an empty database for one test session and return its URL."""
    name = "assistd_t_" + secrets.token_hex(6)
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class AssistdServer:
    """One `assistd serve` subprocess; start/stop/kill keep the same data and port."""

    def __init__(self, upstream_url: str, *, database_url: str = "", env: dict[str, str] | None = None,
                 api_key: str = "test") -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="assistd-test-"))
        self.port = free_port()
        self.api_key = api_key
        self.log_path = self.data_dir / "server.log"
        self.env = {
            **os.environ,
            "ASSISTD_DATA_DIR": str(self.data_dir),
            "ASSISTD_UPSTREAM_BASE_URL": upstream_url,
            "ASSISTD_UPSTREAM_API_KEY": "upstream-key",
            "ASSISTD_DATABASE_URL": database_url,
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "OpenAI-Beta": "assistants=v2"}

    def start(self, timeout: float = 30.0) -> AssistdServer:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "assistd", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"assistd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"assistd did not become healthy:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> AssistdServer:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", self.api_key)
        return openai.OpenAI(base_url=self.base_url, max_retries=0, timeout=30, **kw)

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        kw.setdefault("api_key", self.api_key)
        return openai.AsyncOpenAI(base_url=self.base_url, max_retries=0, timeout=30, **kw)
