"""Shared pieces of the benchmarks: processes on loopback, the client, percentiles, markdown.

Every process a benchmark starts is its own session (so a Ctrl-C reaches the benchmark,
which then stops them in order) and is stopped on the way out, also on errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai

try:  # openai>=3 speaks httpx2 (httpcore2); older SDKs httpx
    import httpx2 as sdk_http
except ImportError:  # pragma: no cover
    import httpx as sdk_http  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The SDK marks the Assistants API deprecated; that is why assistd exists.
warnings.filterwarnings("ignore", category=DeprecationWarning)
POSTGRES_ADMIN_URL = os.environ.get("ASSISTD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")
Obj = dict[str, Any]


# ---------------------------------------------------------------- processes


def raise_fd_limit() -> None:
    """Open-file limit up to the hard limit (1,000 streams need 2,000+ sockets in assistd)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _instrument() -> None:
    """The fake upstream is the measuring instrument: it gets the CPU before the other
    processes (nice -5), so its timestamps aren't late for want of a core."""
    raise_fd_limit()
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, -5)


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, stdout: int | None = None,
           preexec: Callable[[], None] = raise_fd_limit) -> subprocess.Popen[str]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=stdout if stdout is not None else log, stderr=log,
            text=True, preexec_fn=preexec, start_new_session=True,  # noqa: PLW1509 (spawned before any thread)
        )


def stop_process(proc: subprocess.Popen[Any], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only this one process."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen[Any], log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"assistd-bench-{prefix}-"))


# ---------------------------------------------------------------- the fake upstream


@dataclass
class Upstream:
    """The test suite's fake upstream, run as its own process (`python -m tests.support.fake_upstream`)."""

    base_url: str  # …/v1
    pid: int

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    @property
    def port(self) -> int:
        return int(self.root.rsplit(":", 1)[1])

    def log(self, since: int = 0) -> list[Obj]:
        """Request records: marker, outcome, started/ended (monotonic and wall clock)."""
        return list(httpx.get(f"{self.root}/log?since={since}", timeout=30).json())

    def stats(self) -> Obj:
        return dict(httpx.get(f"{self.root}/stats", timeout=30).json())


@contextlib.contextmanager
def fake_upstream(tokens: int, chunk_delay: float) -> Iterator[Upstream]:
    with upstream_process([PYTHON, "-m", "tests.support.fake_upstream", "--port", "0",
                           "--tokens", str(tokens), "--chunk-delay", str(chunk_delay)]) as upstream:
        yield upstream


@contextlib.contextmanager
def upstream_process(cmd: list[str]) -> Iterator[Upstream]:
    """A fake upstream run by `cmd`, which prints `READY <base url>` once it listens; stopped after."""
    work = scratch_dir("upstream")
    proc = spawn(cmd, work / "upstream.log", stdout=subprocess.PIPE, preexec=_instrument)
    try:
        yield Upstream(_ready_line(proc, work / "upstream.log"), proc.pid)
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


def _ready_line(proc: subprocess.Popen[str], log_path: Path) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # blocks until the line, or EOF if it died
    if not line.startswith("READY "):
        raise RuntimeError(f"fake upstream did not start ({line!r}):\n{tail(log_path)}")
    return line.split(" ", 1)[1]


# ---------------------------------------------------------------- assistd


@dataclass
class Server:
    base_url: str  # …/v1
    pid: int
    port: int
    log_path: Path


@contextlib.contextmanager
def assistd(upstream_url: str, database_url: str = "", settings: dict[str, str] | None = None,
            data_dir: Path | None = None) -> Iterator[Server]:
    """`assistd serve` on a fresh data dir (SQLite there, unless `database_url` is given).

    `settings` are more ASSISTD_* variables; a `data_dir` given is used and kept (to serve the
    same data again), else a fresh one is made and removed afterwards.
    """
    data = data_dir or scratch_dir("data")
    port = free_port()
    env = {
        **os.environ, "ASSISTD_DATA_DIR": str(data), "ASSISTD_UPSTREAM_BASE_URL": upstream_url,
        "ASSISTD_UPSTREAM_API_KEY": "bench", "ASSISTD_DATABASE_URL": database_url,
        "ASSISTD_SHUTDOWN_GRACE_SECONDS": "2",  # a benchmark that broke off shouldn't wait on live runs
        **(settings or {}),
    }
    env.pop("ASSISTD_API_KEYS", None)
    log_path = data / "server.log"
    cmd = [PYTHON, "-m", "assistd", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn(cmd, log_path, env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log_path)
        yield Server(f"http://127.0.0.1:{port}/v1", proc.pid, port, log_path)
    finally:
        stop_process(proc)
        if data_dir is None:
            shutil.rmtree(data, ignore_errors=True)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one benchmark; dropped afterwards."""
    name = "assistd_bench_" + secrets.token_hex(5)
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


BACKENDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@contextlib.contextmanager
def database(db: str) -> Iterator[str]:
    """ASSISTD_DATABASE_URL for a backend: "" (SQLite in the data dir) or a fresh PostgreSQL database."""
    if db == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        yield ""


# ---------------------------------------------------------------- the client


def async_client(base_url: str) -> openai.AsyncOpenAI:
    """The official SDK as a heavy client would set it up: no retries, no connection cap.

    Its HTTP client is of the SDK's own library (httpx2 for openai>=3). The SDK also takes
    a legacy `httpx.AsyncClient`, but httpcore 1.x's pool rescans every connection for every
    queued request: with 1,000 streams that alone saturated the benchmark's core.
    """
    http = sdk_http.AsyncClient(limits=sdk_http.Limits(max_connections=None, max_keepalive_connections=2000),
                                timeout=sdk_http.Timeout(300, connect=60))
    return openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=300, http_client=http)


HEADERS = {"Authorization": "Bearer bench", "OpenAI-Beta": "assistants=v2"}


def run_bounded(coro: Coroutine[Any, Any, T], limit: float) -> T:
    """Run the benchmark's coroutine with a hard time limit."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def main(run: Callable[[], str]) -> None:
    """Entry point of a benchmark module: SIGTERM ends it like Ctrl-C (processes stopped)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    print(note_foreign_load() or "", end="")
    print(run())


# ---------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def mib(status: dict[str, str], key: str) -> float:
    return int(status[key].split()[0]) / 1024


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def tcp_peers(inodes: set[str]) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of the TCP sockets among `inodes` (IPv4 loopback)."""
    peers = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[9] in inodes:
            peers.append((int(cols[1].split(":")[1], 16), int(cols[2].split(":")[1], 16), cols[3]))
    return peers


def connection_counts(pid: int, own_port: int, upstream_port: int) -> tuple[int, int]:
    """Established TCP connections of a server: (from clients, to the upstream)."""
    established = [p for p in tcp_peers(socket_inodes(pid)) if p[2] == "01"]
    clients = sum(1 for local, _, _ in established if local == own_port)
    upstream = sum(1 for _, remote, _ in established if remote == upstream_port)
    return clients, upstream


def note_foreign_load() -> str:
    """A warning when other assistd/fake-upstream/benchmark processes share the machine."""
    mine = {os.getpid(), os.getppid()}
    others = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(k in cmd for k in ("assistd serve", "fake_upstream", "-m bench.", "wrk ", "pytest")):
                others.append(f"{entry.name}: {cmd[:100]}")
    load = Path("/proc/loadavg").read_text().split()[:3]
    if not others:
        return ""
    return (f"WARNING: the machine is shared (load average {' '.join(load)}); other processes:\n  "
            + "\n  ".join(others[:10]) + "\n")


# ---------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


QUANTILES = (0.5, 0.9, 0.99)
DISTRIBUTION_HEADER = ("| measure | n | p50 | p90 | p99 | max | target |\n"
                       "| --- | --- | --- | --- | --- | --- | --- |")


def distribution_row(name: str, values: list[float], target: str = "—") -> str:
    if not values:
        return f"| {name} | 0 | – | – | – | – | {target} |"
    cells = [ms(percentile(values, q)) for q in QUANTILES] + [ms(max(values))]
    return f"| {name} | {len(values)} | " + " | ".join(cells) + f" | {target} |"


def distribution_line(name: str, values: list[float], target: str = "") -> str:
    """The same figures as one plain result line."""
    if not values:
        return f"{name}: no samples"
    cells = " ".join(f"p{int(q * 100)}={ms(percentile(values, q))}" for q in QUANTILES)
    return f"{name}: n={len(values)} {cells} max={ms(max(values))}" + (f"  (target {target})" if target else "")


def report(title: str, lines: list[str], markdown: list[str]) -> str:
    """Result lines, then the markdown block (which run_all puts in RESULTS.md)."""
    return "\n".join([f"== {title}", *lines, "", "<!-- markdown -->", *markdown]) + "\n"


def markdown_of(output: str) -> str:
    return output.split("<!-- markdown -->\n", 1)[-1]


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def error_text(exc: BaseException) -> str:
    """The exception and its causes: `APIConnectionError: Connection error. ← ReadError: …`."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        parts.append(f"{type(seen).__name__}: {seen}".strip().rstrip(":"))
        seen = seen.__cause__ or seen.__context__
    return " ← ".join(parts)


def log_problems(log_path: Path) -> list[str]:
    """The WARNING/ERROR/Traceback lines of a server's log."""
    if not log_path.exists():
        return []
    keys = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
    return [line for line in log_path.read_text(errors="replace").splitlines() if any(k in line for k in keys)]
