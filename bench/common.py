"""Shared pieces of the benchmarks: processes on loopback, percentiles, markdown."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
# The SDK marks the Assistants API deprecated; that is why assistd exists.
warnings.filterwarnings("ignore", category=DeprecationWarning)
PYTHON = sys.executable


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def fake_upstream(tokens: int, chunk_delay: float) -> Iterator[str]:
    """The test suite's fake upstream as its own process; yields its base URL."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "tests.support.fake_upstream", "--tokens", str(tokens), "--chunk-delay", str(chunk_delay)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=raise_fd_limit,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        _stop(proc)


@contextlib.contextmanager
def assistd(upstream_url: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """An `assistd serve` process on a fresh SQLite data dir; yields (base_url, pid)."""
    port = free_port()
    data = tempfile.mkdtemp(prefix="assistd-bench-")
    full_env = {**os.environ, "ASSISTD_DATA_DIR": data, "ASSISTD_UPSTREAM_BASE_URL": upstream_url, **(env or {})}
    with open(Path(data) / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "assistd", "serve", "--port", str(port)],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=raise_fd_limit,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        _stop(proc)


def wait_healthy(url: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} never became healthy")


def async_client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url, api_key="bench", max_retries=0, timeout=120,
        http_client=openai.DefaultAsyncHttpxClient(limits=_limits()),
    )


def _limits() -> Any:
    from openai import _constants

    return type(_constants.DEFAULT_CONNECTION_LIMITS)(max_connections=None, max_keepalive_connections=2000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def distribution_row(name: str, values: list[float], target: str) -> str:
    cells = [ms(percentile(values, q)) for q in (0.5, 0.9, 0.99)] + [ms(max(values))]
    return f"| {name} | {len(values)} | " + " | ".join(cells) + f" | {target} |"


DISTRIBUTION_HEADER = "| measure | n | p50 | p90 | p99 | max | target |\n| --- | --- | --- | --- | --- | --- | --- |"


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a live process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024
