"""1,000 concurrent streaming runs through one assistd process: errors, wall time, memory.

Every run gets its own thread and its own streaming `runs.create(stream=True)`, all at
once; each must end `completed` with the upstream's full text. assistd's VmRSS, open file
descriptors and established connections (clients / upstream) are sampled from /proc while
they run, and its VmHWM read at the end. A failure is reported with its stage.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field

import openai

from bench.common import (
    BACKENDS,
    DISTRIBUTION_HEADER,
    Server,
    Upstream,
    assistd,
    async_client,
    connection_counts,
    cpu_seconds,
    database,
    distribution_line,
    distribution_row,
    error_text,
    fake_upstream,
    log_problems,
    main,
    mib,
    proc_status,
    raise_fd_limit,
    report,
    run_bounded,
)

RUNS = 1000
TOKENS, CHUNK_DELAY = 50, 0.05
TIME_LIMIT = 240.0
SAMPLE_EVERY = 1.0


@dataclass
class Outcome:
    stage: str = "create thread"
    status: str = ""
    tokens: int = 0
    error: str = ""
    started: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # stage → monotonic time it was reached


async def _one(client: openai.AsyncOpenAI, assistant_id: str, marker: str, live: list[int]) -> Outcome:
    out = Outcome(started=time.monotonic())
    try:
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": marker}])
        out.marks["thread created"] = time.monotonic()
        out.stage = "open stream"
        stream = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant_id, stream=True)
        out.marks["stream opened"] = time.monotonic()
        out.stage = "streaming"
        live[0] += 1
        try:
            await _read(stream, out)
        finally:
            live[0] -= 1
        out.stage = "done" if out.status == "completed" and out.tokens == TOKENS else "ended wrong"
    except Exception as exc:  # noqa: BLE001 - every failure is counted by stage, none raised
        out.error = error_text(exc)[:400]
    out.marks["ended"] = time.monotonic()
    return out


async def _read(stream: openai.AsyncStream, out: Outcome) -> None:  # type: ignore[type-arg]
    async with stream:
        async for event in stream:
            out.marks.setdefault(event.event, time.monotonic())
            if event.event == "thread.message.delta":
                out.tokens += 1
            elif event.event.startswith("thread.run.") and not event.event.startswith("thread.run.step"):
                out.status = event.data.status
                if event.event == "thread.run.failed" and event.data.last_error:
                    out.error = f"run failed: {event.data.last_error.code}: {event.data.last_error.message}"


STAGES = [  # what each run's timeline is cut at, from the moment its task started
    ("thread created (POST /threads answered)", "thread created"),
    ("run stream opened (POST /threads/{t}/runs answered)", "stream opened"),
    ("`thread.run.in_progress` (worker claimed the run)", "thread.run.in_progress"),
    ("first `thread.message.delta`", "thread.message.delta"),
    ("`thread.run.completed`", "thread.run.completed"),
    ("stream ended", "ended"),
]


@dataclass
class Samples:
    rss_mib: float = 0.0
    fds: int = 0
    clients: int = 0
    upstream: int = 0
    live_streams: int = 0
    timeline: list[str] = field(default_factory=list)


async def _sample(server: Server, upstream: Upstream, live: list[int], samples: Samples) -> None:
    start = time.monotonic()
    while True:
        with contextlib.suppress(OSError, KeyError):
            status = proc_status(server.pid)
            clients, to_upstream = await asyncio.to_thread(connection_counts, server.pid, server.port, upstream.port)
            samples.rss_mib = max(samples.rss_mib, mib(status, "VmRSS"))
            samples.fds = max(samples.fds, len(os.listdir(f"/proc/{server.pid}/fd")))
            samples.clients = max(samples.clients, clients)
            samples.upstream = max(samples.upstream, to_upstream)
            samples.live_streams = max(samples.live_streams, live[0])
            samples.timeline.append(f"{time.monotonic() - start:5.1f}s rss={mib(status, 'VmRSS'):.0f}MiB "
                                    f"streams={live[0]} clients={clients} upstream={to_upstream}")
        await asyncio.sleep(SAMPLE_EVERY)


@dataclass
class Result:
    outcomes: list[Outcome]
    elapsed: float
    samples: Samples
    hwm_mib: float
    rss_start_mib: float
    upstream_stats: dict[str, int]
    cpu: dict[str, float]  # process → CPU seconds used during the runs
    server_log: list[str] = field(default_factory=list)  # its WARNING/ERROR lines


async def _measure(server: Server, upstream: Upstream, runs: int) -> Result:
    client = async_client(server.base_url)
    live, samples = [0], Samples()
    tag = secrets.token_hex(3)
    rss_start = mib(proc_status(server.pid), "VmRSS")
    sampler = asyncio.create_task(_sample(server, upstream, live, samples))
    pids = {"assistd": server.pid, "fake upstream": upstream.pid, "benchmark client": os.getpid()}
    try:
        assistant = await client.beta.assistants.create(model="bench")
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.monotonic()
        outcomes = await asyncio.gather(*(_one(client, assistant.id, f"c1000 {tag} {i}", live) for i in range(runs)))
        elapsed = time.monotonic() - start
        cpu = {name: cpu_seconds(pid) - cpu_start[name] for name, pid in pids.items()}
    finally:
        sampler.cancel()
        await client.close()
    hwm = mib(proc_status(server.pid), "VmHWM")
    stats = await asyncio.to_thread(upstream.stats)
    return Result(list(outcomes), elapsed, samples, hwm, rss_start, stats, cpu)


def run(runs: int = RUNS, db: str = "sqlite", timeline: bool = False) -> str:
    raise_fd_limit()
    with (fake_upstream(TOKENS, CHUNK_DELAY) as upstream, database(db) as database_url,
          assistd(upstream.base_url, database_url) as server):
        result = run_bounded(_measure(server, upstream, runs), TIME_LIMIT)
        result.server_log = log_problems(server.log_path)
    return _render(result, runs, BACKENDS[db], timeline)


def _claim_rate(outcomes: list[Outcome]) -> str:
    claims = sorted(o.marks["thread.run.in_progress"] for o in outcomes if "thread.run.in_progress" in o.marks)
    if len(claims) < 2:
        return "–"
    span = claims[-1] - claims[0]
    return f"{len(claims)} runs over {span:.1f} s: {len(claims) / span:,.0f} /s"


def _relay_rate(done: list[Outcome]) -> str:
    starts = [o.marks["thread.run.in_progress"] for o in done if "thread.run.in_progress" in o.marks]
    ends = [o.marks["thread.run.completed"] for o in done if "thread.run.completed" in o.marks]
    if not starts or not ends:
        return "–"
    return f"{sum(o.tokens for o in done) / (max(ends) - min(starts)):,.0f} /s"


def _render(result: Result, runs: int, backend: str, timeline: bool) -> str:
    done = [o for o in result.outcomes if o.stage == "done"]
    failed = [o for o in result.outcomes if o.stage != "done"]
    by_stage = collections.Counter(f"{o.stage}: {o.error or f'status {o.status!r}, {o.tokens} deltas'}"
                                   for o in failed)
    s = result.samples
    table = [
        ("runs completed with their full text", f"{len(done)} / {runs}", "all"),
        ("errors", f"{len(failed)}", "0"),
        ("wall time (all runs)", f"{result.elapsed:.1f} s (one run alone streams for {TOKENS * CHUNK_DELAY:.1f} s)", "—"),
        ("streams open at once at the client (peak)", f"{s.live_streams}", "—"),
        ("assistd peak RSS (VmHWM at the end)", f"{result.hwm_mib:.0f} MiB (idle before: {result.rss_start_mib:.0f} MiB)",
         "reported"),
        (f"assistd VmRSS, peak of samples every {SAMPLE_EVERY} s", f"{s.rss_mib:.0f} MiB", "—"),
        ("assistd open files (peak sampled)", f"{s.fds}", "—"),
        ("assistd established connections, peak sampled: from clients / to the upstream",
         f"{s.clients} / {s.upstream}", "—"),
        ("CPU used during the runs (2 cores = 200 %)", ", ".join(
            f"{name} {secs:.1f} s ({100 * secs / result.elapsed:.0f} %)" for name, secs in result.cpu.items()), "—"),
        ("runs claimed by the worker (first → last `thread.run.in_progress` at the client)",
         _claim_rate(result.outcomes), "—"),
        ("server log: WARNING/ERROR lines", f"{len(result.server_log)}", "0"),
        ("token deltas relayed per second, streaming phase (first `in_progress` → last `completed`)",
         _relay_rate(done), "—"),
        ("upstream requests (fake upstream /stats)", ", ".join(f"{k} {v}" for k, v in result.upstream_stats.items()), "—"),
    ]
    dist = [(f"start → {name}", [o.marks[mark] - o.started for o in result.outcomes if mark in o.marks])
            for name, mark in STAGES]
    lines = [f"{name}: {value}" + (f"  (target {target})" if target not in ("—", "reported") else "")
             for name, value, target in table]
    lines += [distribution_line(n, v) for n, v in dist]
    lines += [f"failure x{n}: {what}" for what, n in by_stage.most_common(10)]
    lines += [f"sample {line}" for line in s.timeline] if timeline else []
    markdown = [
        f"### {runs:,} concurrent streaming runs ({backend}; each {TOKENS} tokens, {CHUNK_DELAY * 1000:.0f} ms apart)", "",
        "| measure | value | target |", "| --- | --- | --- |",
        *[f"| {name} | {value} | {target} |" for name, value, target in table], "",
        DISTRIBUTION_HEADER, *[distribution_row(n, v) for n, v in dist],
    ]
    if result.server_log:
        markdown += ["", "Server log, first problem lines:", "", "```", *result.server_log[:5], "```"]
    if by_stage:
        markdown += ["", "Failures by stage (count: stage: error):", "",
                     *[f"- {n}: `{what}`" for what, n in by_stage.most_common(10)]]
    return report(f"{runs} concurrent streaming runs ({backend})", lines, markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--db", choices=list(BACKENDS), default="sqlite",
                        help="postgresql: a fresh database on $ASSISTD_BENCH_POSTGRES_URL's server")
    parser.add_argument("--timeline", action="store_true", help="also print the sampled timeline")
    args = parser.parse_args()
    main(lambda: run(args.runs, args.db, args.timeline))
