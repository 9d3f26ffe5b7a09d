"""`GET /v1/threads/{t}/runs/{r}` requests per second: assistd vs a bare Starlette app.

The baseline (bench/bare_app.py) answers the very JSON assistd returned for the run, from
uvicorn with the options `assistd serve` uses. Both are measured by wrk with the same
threads, connections and duration, after a warm-up, one after the other, each alone on
the machine. wrk: `apt-get update && apt-get install -y wrk`; without it a small asyncio
client (keep-alive connections, no HTTP library) stands in; on the 2-core machine it gave
figures within a few per cent of wrk's.

With `--baseline COMMIT`, a second assistd runs that commit's code (bench/baseline.py) on its
own data, and the three servers are measured in turn, so the two assistd figures come from
the same run and the same machine state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from bench.baseline import materialized
from bench.common import (
    HEADERS,
    PYTHON,
    assistd,
    fake_upstream,
    free_port,
    main,
    report,
    scratch_dir,
    spawn,
    stop_process,
    wait_healthy,
)

THREADS, CONNECTIONS, DURATION, WARMUP, ROUNDS = 1, 32, 10, 2, 2
BARE, ASSISTD = "bare Starlette JSON endpoint (baseline)", "assistd (SQLite)"
TARGET = "≥ 0.6"  # issue 11
WRK_INSTALL = "apt-get update && apt-get install -y wrk"


@dataclass
class Load:
    rps: float
    requests: int
    errors: int
    latency: str  # wrk's average latency, or the client's mean
    tool: str


# ---------------------------------------------------------------- load generators


def _wrk(url: str, duration: int) -> Load:
    headers = [arg for name, value in HEADERS.items() for arg in ("-H", f"{name}: {value}")]
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", *headers, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    latency = re.search(r"Latency\s+(\S+)", out)
    if not (rps and total and latency):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return Load(float(rps.group(1)), int(total.group(1)), errors, latency.group(1), "wrk")


async def _keepalive_client(url: httpx.URL, deadline: float, counts: dict[str, int], latencies: list[float]) -> None:
    """One keep-alive HTTP/1.1 connection sending GETs back to back (answers carry Content-Length)."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
    request = f"GET {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}\r\n{head}\r\n".encode()
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            writer.write(request)
            status, length = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            await reader.readexactly(length)
            counts["ok" if status == 200 else "errors"] += 1
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


def _parse_head(head: bytes) -> tuple[int, int]:
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split(" ", 2)[1]), length


async def _python_load(url: str, duration: int) -> Load:
    """The fallback when wrk is missing: CONNECTIONS keep-alive connections in one asyncio process."""
    counts = {"ok": 0, "errors": 0}
    latencies: list[float] = []
    start = time.monotonic()
    await asyncio.gather(*(_keepalive_client(httpx.URL(url), start + duration, counts, latencies)
                           for _ in range(CONNECTIONS)))
    elapsed = time.monotonic() - start
    mean = sum(latencies) / max(1, len(latencies))
    return Load(counts["ok"] / elapsed, counts["ok"], counts["errors"], f"{mean * 1000:.2f}ms", "python/asyncio")


def measure(url: str, duration: int) -> Load:
    if shutil.which("wrk"):
        return _wrk(url, duration)
    return asyncio.run(_python_load(url, duration))


def measure_alternating(urls: dict[str, str]) -> dict[str, list[Load]]:
    """A warm-up of each, then ROUNDS rounds in A B B A … order, so a drift in the
    machine's speed weighs on both alike."""
    for url in urls.values():
        measure(url, WARMUP)
    names = list(urls)
    loads: dict[str, list[Load]] = {name: [] for name in names}
    for i in range(ROUNDS):
        for name in names if i % 2 == 0 else names[::-1]:
            loads[name].append(measure(urls[name], DURATION))
    return loads


# ---------------------------------------------------------------- the servers


def _completed_run(base_url: str) -> str:
    """Create a run, wait for it to complete; its URL."""
    with httpx.Client(base_url=base_url, headers=HEADERS, timeout=30) as http:
        assistant = http.post("/assistants", json={"model": "bench"}).json()
        body = {"assistant_id": assistant["id"], "thread": {"messages": [{"role": "user", "content": "hi"}]}}
        run = http.post("/threads/runs", json=body).json()
        path = f"/threads/{run['thread_id']}/runs/{run['id']}"
        for _ in range(200):
            if http.get(path).json()["status"] == "completed":
                return base_url + path
            time.sleep(0.05)
    raise RuntimeError("the run did not complete within 10 s")


@contextlib.contextmanager
def _bare_app(body: bytes) -> Iterator[str]:
    work = scratch_dir("bare")
    (work / "run.json").write_bytes(body)
    port = free_port()
    log_path = work / "bare.log"
    proc = spawn([PYTHON, "-m", "bench.bare_app", "--port", str(port), "--json", str(work / "run.json")], log_path)
    try:
        url = f"http://127.0.0.1:{port}/v1/threads/thread_x/runs/run_x"
        wait_healthy(url, proc, log_path)
        yield url
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


def run(baseline: str = "") -> str:
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(fake_upstream(3, 0.0))
        urls: dict[str, str] = {}
        if baseline:
            old = stack.enter_context(materialized(baseline))
            old_server = stack.enter_context(assistd(upstream.base_url, settings=old.env({})))
            urls[f"assistd (SQLite) at {old.label}"] = _completed_run(old_server.base_url)
        server = stack.enter_context(assistd(upstream.base_url))
        urls[ASSISTD] = url = _completed_run(server.base_url)
        body = httpx.get(url, headers=HEADERS).content
        bare_url = stack.enter_context(_bare_app(json.dumps(json.loads(body)).encode()))
        urls = {BARE: bare_url, **urls}
        sizes = {name: len(httpx.get(each, headers=HEADERS).content) for name, each in urls.items()}
        loads = measure_alternating(urls)
    return _render(loads, sizes)


def _rps(loads: list[Load]) -> float:
    return sum(load.rps for load in loads) / len(loads)


def _render(loads: dict[str, list[Load]], sizes: dict[str, int]) -> str:
    ratios = {name: _rps(runs) / _rps(loads[BARE]) for name, runs in loads.items() if name != BARE}
    ratio = ratios[ASSISTD]
    tool = loads[ASSISTD][0].tool
    setup = f"{tool} -t{THREADS} -c{CONNECTIONS} -d{DURATION}s, {ROUNDS} rounds each, alternating, after a {WARMUP} s warm-up"
    lines, rows = [], []
    for name, runs in loads.items():
        rounds = " / ".join(f"{load.rps:,.0f}" for load in runs)
        errors = sum(load.errors for load in runs)
        latency = " / ".join(load.latency for load in runs)
        lines.append(f"{name}: {_rps(runs):,.0f} req/s (rounds: {rounds}), {errors} errors, "
                     f"mean latency {latency}, body {sizes[name]} bytes")
        rows.append(f"| {name} | **{_rps(runs):,.0f}** | {rounds} | {errors} | {latency} | {sizes[name]} B |")
    lines += [f"ratio {name} / baseline: {each:.2f}" for name, each in ratios.items() if name != ASSISTD]
    lines.append(f"ratio assistd / baseline: {ratio:.2f} (target {TARGET})")
    if tool != "wrk":
        lines.append(f"wrk is not installed ({WRK_INSTALL}): measured with a Python client instead")
    markdown = [
        f"### `GET /v1/threads/{{t}}/runs/{{r}}` throughput ({setup})", "",
        "| server | requests/s (mean) | each round | errors | mean latency | body |",
        "| --- | --- | --- | --- | --- | --- |", *rows,
        "", *[f"ratio {name} / baseline: {each:.2f}" for name, each in ratios.items() if name != ASSISTD],
        f"**ratio assistd / baseline: {ratio:.2f}** (target {TARGET})",
    ]
    return report("GET run requests per second", lines, markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=DURATION, help="seconds of each measured load")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="measurements of each server, alternating")
    parser.add_argument("--baseline", default="", help="also measure assistd at this commit, in turn")
    args = parser.parse_args()
    DURATION, ROUNDS = args.duration, args.rounds
    main(lambda: run(args.baseline))
