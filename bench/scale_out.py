"""Scale-out: runs per second and cancel latency with 1, 2 and 4 `assistd worker` processes.

Per worker count W, on a fresh PostgreSQL database and the shared Redis: `assistd migrate`,
then two `assistd serve --no-worker` API processes and W `assistd worker` processes. One fake
upstream (the measuring instrument, reniced to -5) serves the whole benchmark with two replies,
chosen by the run's marker message: `job-…` → a short reply, `cancel-…` → a long one.

1. Runs per second: N runs, each on its own thread (marker `job-00042 <tag>`), at most
   IN_FLIGHT at once, alternating between the two API processes; each is started *streaming*
   (`runs.create(stream=True)`) and timed from just before the request to `thread.run.completed`.
   Every run must complete with all its deltas; the fake upstream's log must hold each marker
   exactly once (no run's upstream request made twice); `runs.worker_id` shows the spread.
2. Cancel latency across processes: M long streaming runs, streams opened on API process 0;
   once each has a delta they are cancelled one by one through API process 1 (the run executes
   on a worker process), 20 ms after each cancel's answer. As in bench/cancel_latency.py,
   t0 = just before the cancel request, A = the fake upstream's `ended_wall` for that run's
   request (outcome `client_closed`) − t0, B = the stream receiving `thread.run.cancelled` − t0.

CPU seconds of every process (from /proc/<pid>/stat) are read around each phase.

With `--baseline COMMIT` (default a43c4df, the commit issue 11 was filed against; `none` skips it),
the 1-worker runs/s phase is also measured on that commit's code (bench/baseline.py: its src/ from
`git archive`, run from the same virtualenv through PYTHONPATH), alternately with the current
code's, B C C B, each round on a fresh database and processes; the report gives both figures and
the ratio current ÷ baseline beside issue 11's target, ≥ 2×. Other worker counts are unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai

from bench.baseline import CURRENT, DEFAULT, Code, checkout_label, materialized
from bench.cancel_latency import Checks, LiveRun, _cancel_one, _check_stored, _check_stream, _follow
from bench.common import (
    DISTRIBUTION_HEADER,
    PYTHON,
    Server,
    Upstream,
    async_client,
    cpu_seconds,
    distribution_line,
    distribution_row,
    error_text,
    free_port,
    log_problems,
    main,
    percentile,
    postgres_database,
    report,
    run_bounded,
    scratch_dir,
    spawn,
    tail,
    upstream_process,
    wait_healthy,
)

WORKERS = (1, 2, 4)
API_PROCESSES = 2
RUNS, IN_FLIGHT = 400, 64
JOB_TOKENS, JOB_DELAY = 20, 0.010  # 200 ms of streaming per run
CANCELS, CANCEL_PACE = 50, 0.020
CANCEL_TOKENS, CANCEL_DELAY = 4000, 0.05  # 200 s: every run is live when it is cancelled
TIME_LIMIT = 290.0  # the whole benchmark (without a baseline)
BASELINE_ROUNDS = 2  # 1-worker runs/s rounds of each code when a baseline is compared
BASELINE_TIME = 60.0  # more time limit for each round the comparison adds
STREAM_WAIT = 30.0  # for every cancel-phase stream to have a delta
PHASE_LIMIT = 100.0  # one phase of one worker count
TARGET = "p99 ≤ 200 ms"
REDIS_URL = os.environ.get("ASSISTD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
T = TypeVar("T")
JOB, CANCEL = "job-", "cancel-"  # marker prefixes: which reply the fake upstream sends


# ---------------------------------------------------------------- the fake upstream, two replies


def serve_upstream(job_tokens: str, job_delay: str, cancel_tokens: str, cancel_delay: str) -> None:
    """In its own process: the fake upstream, short replies for `job-…`, long ones for `cancel-…`."""
    from tests.support.fake_upstream import FakeUpstream, Reply, serve_until_stopped

    def text(tokens: str, delay: str) -> Reply:
        return Reply.text(" ".join(f"tok{i}" for i in range(int(tokens))), chunk_delay=float(delay))

    def make() -> FakeUpstream:
        upstream = FakeUpstream(text(job_tokens, job_delay))
        upstream.on(CANCEL, text(cancel_tokens, cancel_delay))
        return upstream

    serve_until_stopped(make)


@contextlib.contextmanager
def two_reply_upstream() -> Iterator[Upstream]:
    code = "import sys; from bench.scale_out import serve_upstream; serve_upstream(*sys.argv[1:])"
    args = [str(JOB_TOKENS), str(JOB_DELAY), str(CANCEL_TOKENS), str(CANCEL_DELAY)]
    with upstream_process([PYTHON, "-c", code, *args]) as upstream:
        yield upstream


# ---------------------------------------------------------------- the deployment


@dataclass
class Worker:
    name: str
    pid: int
    log_path: Path
    id: str = ""  # host:pid:random, from its `worker ready` line


@dataclass
class Deployment:
    apis: list[Server]
    workers: list[Worker]
    database_url: str
    upstream: Upstream

    def names(self, worker_id: str | None) -> str:
        return next((w.name for w in self.workers if worker_id and w.id == worker_id), str(worker_id))

    def logs(self) -> list[tuple[str, Path]]:
        apis = [(f"api {i}", a.log_path) for i, a in enumerate(self.apis)]
        return apis + [(w.name, w.log_path) for w in self.workers]


def _stop_all(procs: list[subprocess.Popen[Any]], grace: float = 10.0) -> None:
    """SIGTERM to all at once, SIGKILL to any still there after `grace` s; only these processes."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_worker_ready(proc: subprocess.Popen[Any], worker: Worker, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{worker.name} exited with {proc.returncode}:\n{tail(worker.log_path)}")
        if worker.log_path.exists():
            for line in worker.log_path.read_text(errors="replace").splitlines():
                if "worker ready" in line:
                    worker.id = line.split("worker ready:", 1)[1].split()[0]
                    return
        time.sleep(0.05)
    raise RuntimeError(f"{worker.name}: no `worker ready` within {timeout:.0f} s:\n{tail(worker.log_path)}")


@contextlib.contextmanager
def deployment(upstream: Upstream, database_url: str, workers: int, keep_logs: bool = False,
               code: Code = CURRENT) -> Iterator[Deployment]:
    """`assistd migrate`, then API_PROCESSES × `serve --no-worker` and `workers` × `assistd worker`, of `code`."""
    data = scratch_dir("scale")
    env = code.env({
        **os.environ, "ASSISTD_DATA_DIR": str(data), "ASSISTD_UPSTREAM_BASE_URL": upstream.base_url,
        "ASSISTD_UPSTREAM_API_KEY": "bench", "ASSISTD_DATABASE_URL": database_url, "ASSISTD_REDIS_URL": REDIS_URL,
        "ASSISTD_SHUTDOWN_GRACE_SECONDS": "2",  # a benchmark that broke off shouldn't wait on live runs
        "ASSISTD_EVENTS_TTL_SECONDS": "600",  # the shared Redis keeps the bench's event streams 10 min, not 1 h
        # 6 processes × (10 + 1 LISTEN) stay under PostgreSQL's default max_connections of 100.
        "ASSISTD_DATABASE_POOL_SIZE": "10",
    })
    for name in ("ASSISTD_API_KEYS", "ASSISTD_WORKER_CONCURRENCY"):
        env.pop(name, None)
    procs: list[subprocess.Popen[Any]] = []
    try:
        migrate_log = data / "migrate.log"
        with open(migrate_log, "ab") as log:
            done = subprocess.run([PYTHON, "-m", "assistd", "migrate"], cwd=data, env=env, stdout=log,
                                  stderr=log, timeout=60, check=False)
        if done.returncode:
            raise RuntimeError(f"assistd migrate exited with {done.returncode}:\n{tail(migrate_log)}")
        apis = []
        for i in range(API_PROCESSES):
            port, log_path = free_port(), data / f"api{i}.log"
            cmd = [PYTHON, "-m", "assistd", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)]
            procs.append(proc := spawn(cmd, log_path, env))
            apis.append((proc, Server(f"http://127.0.0.1:{port}/v1", proc.pid, port, log_path)))
        started = []
        for i in range(workers):
            procs.append(proc := spawn([PYTHON, "-m", "assistd", "worker"], data / f"worker{i}.log", env))
            started.append((proc, Worker(f"worker {i}", proc.pid, data / f"worker{i}.log")))
        for proc, server in apis:
            wait_healthy(f"http://127.0.0.1:{server.port}/healthz", proc, server.log_path)
        for proc, worker in started:
            _wait_worker_ready(proc, worker)
        yield Deployment([s for _, s in apis], [w for _, w in started], database_url, upstream)
    finally:
        _stop_all(procs)
        if not keep_logs:
            shutil.rmtree(data, ignore_errors=True)


# ---------------------------------------------------------------- CPU seconds


def _stat(pid: int | str) -> tuple[str, list[str]]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()


def _cpu_of_command(comm: str) -> float:
    """utime+stime+cutime+cstime of every process named `comm` (its exited children included)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                name, fields = _stat(entry.name)
                if name == comm:
                    total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(dep: Deployment) -> dict[str, float]:
    pids = {f"api {i}": a.pid for i, a in enumerate(dep.apis)} | {w.name: w.pid for w in dep.workers}
    pids |= {"fake upstream": dep.upstream.pid, "benchmark client": os.getpid()}
    snap = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            snap[name] = cpu_seconds(pid)
    snap["postgres (all backends)"] = _cpu_of_command("postgres")
    snap["redis-server"] = _cpu_of_command("redis-server")
    return snap


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before if name in after}


# ---------------------------------------------------------------- phase 1: runs per second


@dataclass
class Job:
    marker: str
    thread_id: str = ""
    run_id: str = ""
    status: str = ""
    deltas: int = 0
    error: str = ""
    started: float = 0.0
    claimed: float | None = None  # thread.run.in_progress
    completed: float | None = None  # thread.run.completed


@dataclass
class Throughput:
    runs: int
    wall: float = 0.0
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    to_completed: list[float] = field(default_factory=list)
    to_claimed: list[float] = field(default_factory=list)
    spread: dict[str, int] = field(default_factory=dict)
    upstream_once: int = 0
    upstream_twice_or_more: int = 0
    upstream_missing: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.completed / self.wall if self.wall else 0.0


async def _job(client: openai.AsyncOpenAI, assistant_id: str, job: Job) -> None:
    job.started = time.monotonic()
    try:
        stream = await client.beta.threads.runs.create(thread_id=job.thread_id, assistant_id=assistant_id, stream=True)
        async with stream:
            async for event in stream:
                if event.event == "thread.message.delta":
                    job.deltas += 1
                elif isinstance(event.data, openai.types.beta.threads.Run):
                    job.run_id, job.status = event.data.id, event.data.status
                    if event.event == "thread.run.in_progress":
                        job.claimed = time.monotonic()
                    elif event.event == "thread.run.completed":
                        job.completed = time.monotonic()
                    elif event.event == "thread.run.failed" and event.data.last_error:
                        job.error = f"run failed: {event.data.last_error.code}: {event.data.last_error.message}"
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none raised
        job.error = error_text(exc)[:300]


async def _bounded_all(calls: Sequence[Callable[[], Awaitable[None]]], limit: int, timeout: float) -> None:
    """Make the calls, at most `limit` at once; cancel whatever is left after `timeout` s."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await call()

    tasks = [asyncio.create_task(one(c)) for c in calls]
    try:
        await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _worker_spread(dep: Deployment, conn: Any, run_ids: list[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT worker_id, count(*) AS n FROM runs WHERE id = ANY($1::text[]) "
                            "GROUP BY worker_id", run_ids)
    return dict(sorted((dep.names(row["worker_id"]), int(row["n"])) for row in rows))


async def measure_throughput(dep: Deployment, conn: Any, runs: int) -> Throughput:
    clients = [async_client(api.base_url) for api in dep.apis]
    tag = secrets.token_hex(3)
    result = Throughput(runs)
    try:
        assistant = await clients[0].beta.assistants.create(model="bench")
        jobs = [Job(f"{JOB}{i:05d} {tag}") for i in range(runs)]

        async def new_thread(i: int, job: Job) -> None:
            thread = await clients[i % len(clients)].beta.threads.create(
                messages=[{"role": "user", "content": job.marker}])
            job.thread_id = thread.id

        await _bounded_all([functools.partial(new_thread, i, j) for i, j in enumerate(jobs)], IN_FLIGHT, 60)
        since = (await asyncio.to_thread(dep.upstream.stats))["requests"]
        before, start = cpu_snapshot(dep), time.monotonic()
        started = [functools.partial(_job, clients[i % len(clients)], assistant.id, j)
                   for i, j in enumerate(jobs) if j.thread_id]
        await _bounded_all(started, IN_FLIGHT, PHASE_LIMIT - 30)
        ends = [j.completed for j in jobs if j.completed is not None]
        result.wall = (max(ends) if ends else time.monotonic()) - start
        result.cpu = cpu_delta(before, cpu_snapshot(dep))
        log = await asyncio.to_thread(dep.upstream.log, since)
    finally:
        for client in clients:
            await client.close()
    for job in jobs:
        if job.status == "completed" and job.deltas == JOB_TOKENS and not job.error and job.completed:
            result.completed += 1
            result.to_completed.append(job.completed - job.started)
        else:
            why = job.error or ("no thread" if not job.thread_id else
                                f"status {job.status!r} with {job.deltas} deltas (expected {JOB_TOKENS})")
            result.failures.append(f"{job.marker} {job.run_id}: {why}")
        if job.claimed:
            result.to_claimed.append(job.claimed - job.started)
    seen = collections.Counter(record["marker"] for record in log)
    for job in jobs:
        count = seen[job.marker]
        result.upstream_once += count == 1
        result.upstream_twice_or_more += count > 1
        result.upstream_missing += count == 0
    result.spread = await _worker_spread(dep, conn, [j.run_id for j in jobs if j.run_id])
    return result


# ---------------------------------------------------------------- phase 2: cancel latency


@dataclass
class CancelResult:
    runs: int
    closed: list[float] = field(default_factory=list)  # A
    cancelled: list[float] = field(default_factory=list)  # B
    answered: list[float] = field(default_factory=list)
    checks: Checks = field(default_factory=Checks)
    spread: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


async def measure_cancels(dep: Deployment, conn: Any, count: int) -> CancelResult:
    streams, cancels = async_client(dep.apis[0].base_url), async_client(dep.apis[1].base_url)
    tag = secrets.token_hex(3)
    result = CancelResult(count)
    tasks: list[asyncio.Task[None]] = []
    try:
        assistant = await streams.beta.assistants.create(model="bench")
        live = [LiveRun(f"{CANCEL}{i:03d} {tag}", "") for i in range(count)]

        async def new_thread(run: LiveRun) -> None:
            run.thread_id = (await streams.beta.threads.create(messages=[{"role": "user", "content": run.marker}])).id

        await _bounded_all([functools.partial(new_thread, r) for r in live], IN_FLIGHT, 60)
        since = (await asyncio.to_thread(dep.upstream.stats))["requests"]
        before = cpu_snapshot(dep)

        async def follow(run: LiveRun) -> None:
            await _follow(streams, assistant.id, run)
            run.streaming.set()  # a stream that ended without a delta must not hold up the others

        tasks = [asyncio.create_task(follow(r)) for r in live if r.thread_id]
        waits = [asyncio.create_task(r.streaming.wait()) for r in live if r.thread_id]
        _, late = await asyncio.wait(waits, timeout=STREAM_WAIT)
        for waiting in late:
            waiting.cancel()
        silent = [r for r in live if r.thread_id and not r.text]
        if silent:  # cancelled like the others, reported here
            result.checks.problems.append(
                f"{len(silent)} of {count} streams had no delta before the cancels (waited ≤ {STREAM_WAIT:.0f} s), "
                f"e.g. {silent[0].run_id or silent[0].marker}: {silent[0].error or 'stream ended or still silent'}")
        for run in live:
            if run.run_id and not run.error:
                await _cancel_one(cancels, run)
                await asyncio.sleep(CANCEL_PACE)
        _, unfinished = await asyncio.wait(tasks, timeout=30)
        for task in unfinished:
            task.cancel()
        result.cpu = cpu_delta(before, cpu_snapshot(dep))
        log = {record["marker"]: record for record in await asyncio.to_thread(dep.upstream.log, since)}
        _collect(result, live, log)
        semaphore = asyncio.Semaphore(10)

        async def check(run: LiveRun) -> None:
            async with semaphore:
                await _check_stored(cancels, run, result.checks)

        await asyncio.wait_for(asyncio.gather(*(check(r) for r in live if r.run_id)), 60)
        result.spread = await _worker_spread(dep, conn, [r.run_id for r in live if r.run_id])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await streams.close()
        await cancels.close()
    return result


def _collect(result: CancelResult, live: list[LiveRun], log: dict[str, Any]) -> None:
    for run in live:
        _check_stream(run, result.checks)
        record = log.get(run.marker, {})
        if record.get("outcome") == "client_closed" and run.t0:
            result.checks.upstream_client_closed += 1
            result.closed.append(record["ended_wall"] - run.t0)
        elif run.t0:
            result.checks.problems.append(f"{run.run_id}: upstream outcome {record.get('outcome')!r}")
        if run.cancelled_wall is not None and run.t0:
            result.cancelled.append(run.cancelled_wall - run.t0)
        if run.answered and not run.error:
            result.answered.append(run.answered - run.t0)


# ---------------------------------------------------------------- the benchmark


@dataclass
class Round:
    workers: int
    code: str = CURRENT.label  # whose assistd: "current" or the baseline's short commit
    throughput: Throughput | None = None
    cancels: CancelResult | None = None
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)  # peak PostgreSQL connections seen
    error: str = ""


@dataclass
class Comparison:
    """The 1-worker runs/s of a baseline commit's code and of the current code, measured alternately."""

    commit: str  # as asked for (`a43c4df`)
    rounds: list[Round] = field(default_factory=list)  # in the order measured
    current: str = CURRENT.label  # the checkout's commit, for the report
    error: str = ""


async def _sample_connections(conn: Any, peaks: dict[str, int]) -> None:
    """Peak connections to this round's database and to the whole server, every 0.25 s."""
    peaks["max_connections"] = int(await conn.fetchval("SHOW max_connections"))
    while True:
        row = await conn.fetchrow("SELECT count(*) FILTER (WHERE datname = current_database()) AS mine, "
                                  "count(*) FILTER (WHERE backend_type = 'client backend') AS server "
                                  "FROM pg_stat_activity")
        peaks["this database"] = max(peaks.get("this database", 0), int(row["mine"]))
        peaks["server (client backends)"] = max(peaks.get("server (client backends)", 0), int(row["server"]))
        await asyncio.sleep(0.25)


async def _limit(coro: Coroutine[Any, Any, T], what: str) -> T:
    try:
        return await asyncio.wait_for(coro, PHASE_LIMIT)
    except TimeoutError:
        raise TimeoutError(f"{what} took over {PHASE_LIMIT:.0f} s") from None


async def measure_round(dep: Deployment, one: Round, runs: int, cancels: int) -> None:
    """Both phases on one deployment (no cancel phase with `cancels` 0); the benchmark's own
    PostgreSQL connection is taken first."""
    import asyncpg

    conn = await asyncpg.connect(dep.database_url, timeout=10)
    watch = await asyncpg.connect(dep.database_url, timeout=10)
    sampler = asyncio.create_task(_sample_connections(watch, one.connections))
    try:
        one.throughput = await _limit(measure_throughput(dep, conn, runs), "the runs/s phase")
        if cancels:
            one.cancels = await _limit(measure_cancels(dep, conn, cancels), "the cancel phase")
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await watch.close()
        await conn.close()


@dataclass
class Plan:
    """What every round of one invocation shares."""

    upstream: Upstream
    runs: int
    cancels: int
    keep_logs: bool
    deadline: float  # time.monotonic() by which the benchmark ends
    limit: float  # its whole time limit, for the report
    kept: list[str] = field(default_factory=list)  # log paths kept


def _measure(plan: Plan, one: Round, code: Code = CURRENT, cancels: int | None = None) -> None:
    """One round on a fresh database and deployment of `code`; a failure is written into `one`."""
    if plan.deadline - time.monotonic() < 30:
        one.error = f"skipped: the benchmark had used its {plan.limit:.0f} s"
        return
    try:
        with postgres_database() as url, deployment(plan.upstream, url, one.workers, plan.keep_logs, code) as dep:
            try:
                run_bounded(measure_round(dep, one, plan.runs, plan.cancels if cancels is None else cancels),
                            min(2 * PHASE_LIMIT, plan.deadline - time.monotonic()))
            finally:
                one.log_problems = {name: log_problems(path) for name, path in dep.logs()}
                label = "" if code is CURRENT else f"{code.label} "
                plan.kept += [f"{label}{name}: {path}" for name, path in dep.logs()] if plan.keep_logs else []
    except Exception as exc:  # noqa: BLE001 - one broken round must not hide the others
        one.error = error_text(exc)[:600]


def _compare_one_worker(plan: Plan, old: Code, comparison: Comparison, rounds_each: int) -> Round:
    """1 worker, baseline and current code alternately (B C C B …, so a drift in the machine's
    speed weighs on both alike), each round on a fresh database and processes. The current
    code's first round also has the cancel phase: it is the 1-worker round of the main table."""
    main_round: Round | None = None
    for i in range(rounds_each):
        for code in (old, CURRENT) if i % 2 == 0 else (CURRENT, old):
            first_current = code is CURRENT and main_round is None
            one = Round(1, code.label)
            _measure(plan, one, code, None if first_current else 0)
            comparison.rounds.append(one)
            main_round = one if first_current else main_round
    assert main_round is not None
    return main_round


@contextlib.contextmanager
def _baseline_code(commit: str, comparison: Comparison) -> Iterator[Code | None]:
    """The baseline commit's code for the block; None (and the reason in `comparison`) if it can't be had."""
    with contextlib.ExitStack() as stack:
        try:
            old: Code | None = stack.enter_context(materialized(commit))
        except Exception as exc:  # noqa: BLE001 - the current code is measured all the same
            comparison.error = f"baseline {commit} not materialized: {error_text(exc)[:400]}"
            old = None
        yield old


def run(workers: tuple[int, ...] = WORKERS, runs: int = RUNS, cancels: int = CANCELS, keep_logs: bool = False,
        baseline: str = DEFAULT, baseline_rounds: int = BASELINE_ROUNDS) -> str:
    """Every worker count on a fresh database, one after the other, within the time limit; with a
    `baseline` commit ("" for none), the 1-worker runs/s of that commit's code beside the current's."""
    compare = bool(baseline) and 1 in workers
    limit = TIME_LIMIT + (BASELINE_TIME * (2 * baseline_rounds - 1) if compare else 0)
    comparison = Comparison(baseline, current=checkout_label())
    rounds: list[Round] = []
    with two_reply_upstream() as upstream, _baseline_code(baseline if compare else "", comparison) as old:
        plan = Plan(upstream, runs, cancels, keep_logs, time.monotonic() + limit, limit)
        for count in workers:
            if count == 1 and old is not None:
                rounds.append(_compare_one_worker(plan, old, comparison, baseline_rounds))
            else:
                rounds.append(one := Round(count))
                _measure(plan, one)
    output = render(rounds, runs, cancels, comparison if compare else None)
    return output if not plan.kept else "logs kept:\n  " + "\n  ".join(plan.kept) + "\n" + output


# ---------------------------------------------------------------- rendering


def _pq(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{percentile(values, 0.5) * 1000:.0f} / {percentile(values, 0.99) * 1000:.0f} ms"


def _cpu_line(cpu: dict[str, float], wall: float = 0.0) -> str:
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items())
    available = f" of the {2 * wall:.1f} core-seconds of its {wall:.1f} s" if wall else ""
    return f"{parts}; total {sum(cpu.values()):.1f}{available}"


def _log_summary(found: list[str]) -> list[str]:
    """WARNING/ERROR lines without timestamps and ids, counted: `23 × ERROR assistd.worker: …`."""
    def plain(line: str) -> str:
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line)
        return re.sub(r"run_[A-Za-z0-9]+", "run_…", line)[:160]

    counts = collections.Counter(plain(line) for line in found)
    return [f"{n} × {text}" for text, n in counts.most_common(3)]


def _throughput_part(t: Throughput, base: float) -> tuple[list[str], list[str]]:
    ratio = f" (ratio vs 1 worker: {t.per_second / base:.2f})" if base else ""
    facts = [
        f"{t.completed}/{t.runs} completed in {t.wall:.2f} s = {t.per_second:.1f} runs/s{ratio}",
        f"failures: {len(t.failures)}",
        "runs per worker (`runs.worker_id`): " + ", ".join(f"{k} {v}" for k, v in t.spread.items()),
        (f"upstream requests per marker: {t.upstream_once} exactly once, {t.upstream_twice_or_more} more than once, "
         f"{t.upstream_missing} never"),
    ]
    cpu = f"CPU seconds in the runs/s phase: {_cpu_line(t.cpu, t.wall)}"
    rows = [("create → `thread.run.completed`", t.to_completed),
            ("create → `thread.run.in_progress` (claimed)", t.to_claimed)]
    lines = [*facts, cpu, *[distribution_line(name, v) for name, v in rows], *[f"failure: {f}" for f in t.failures[:5]]]
    md = ["Runs/s: " + "; ".join(facts) + ".", "", cpu + ".", "", DISTRIBUTION_HEADER,
          *[distribution_row(name, v) for name, v in rows], ""]
    if t.failures:
        md += [*[f"- failure: {f}" for f in t.failures[:5]], ""]
    return lines, md


def _cancel_part(c: CancelResult) -> tuple[list[str], list[str]]:
    k, n = c.checks, c.runs
    checks = [
        f"cancel answered `cancelling` {k.answered_cancelling}/{n}",
        f"upstream outcome `client_closed` {k.upstream_client_closed}/{n}",
        f"stream got `thread.run.cancelled` and ended {k.stream_cancelled_then_ended}/{n}",
        f"run retrieved afterwards `cancelled` {k.retrieved_cancelled}/{n}",
        f"last message `incomplete` (run_cancelled) with text {k.message_incomplete_with_text}/{n}",
        "cancelled runs per worker: " + ", ".join(f"{key} {v}" for key, v in c.spread.items()),
    ]
    rows = [("A: cancel (API 1) → upstream sees the connection closed", c.closed, TARGET),
            ("B: cancel (API 1) → stream (API 0) receives `thread.run.cancelled`", c.cancelled, TARGET),
            ("cancel request answered (API 1)", c.answered, "—")]
    cpu = f"CPU seconds in the cancel phase: {_cpu_line(c.cpu)}"
    lines = [*[distribution_line(name, v, tg if tg != "—" else "") for name, v, tg in rows], *checks, cpu,
             *[f"problem: {p}" for p in k.problems[:5]]]
    md = [DISTRIBUTION_HEADER, *[distribution_row(name, v, tg) for name, v, tg in rows], "",
          "Cancel checks: " + "; ".join(checks) + ".", "", cpu + ".", ""]
    if k.problems:
        md += [*[f"- problem: {p}" for p in k.problems[:5]], ""]
    return lines, md


def _round_part(r: Round, base: float, name: str = "") -> tuple[list[str], list[str]]:
    name = name or f"{r.workers} worker{'s' if r.workers > 1 else ''}"
    lines, md = [f"-- {name}"], [f"#### {name}", ""]
    if r.error:
        lines.append(f"error: {r.error}")
        md += [f"Error: `{r.error}`", ""]
    for part in ([_throughput_part(r.throughput, base)] if r.throughput else []) + (
            [_cancel_part(r.cancels)] if r.cancels else []):
        lines += part[0]
        md += part[1]
    if r.connections:
        peak = ", ".join(f"{k} {v}" for k, v in r.connections.items() if k != "max_connections")
        seen = (f"PostgreSQL connections at their peak (sampled every 0.25 s; the benchmark's own 2 included): {peak}; "
                f"the server's max_connections is {r.connections.get('max_connections', '?')}")
        lines.append(seen)
        md += [seen + ".", ""]
    for name, found in r.log_problems.items():
        if found:
            lines += [f"{name} log: {line}" for line in _log_summary(found)]
            md += [f"- {name} log, {len(found)} WARNING/ERROR lines: "
                   + "; ".join(f"`{line}`" for line in _log_summary(found))]
    if any(r.log_problems.values()):
        md.append("")
    return lines, md


def _assistd_cpu_per_run(t: Throughput) -> float:
    """CPU seconds of the API and worker processes per completed run (less noisy than runs/s on a busy machine)."""
    used = sum(v for k, v in t.cpu.items() if k.startswith(("api ", "worker ")))
    return used / t.completed if t.completed else float("nan")


def _code_row(name: str, measured: list[tuple[int, Round]]) -> tuple[str, str, float]:
    """One code's figures in the comparison: each round's runs/s (#its place in the order), their mean;
    as a plain line and as a markdown row."""
    done = [(i, r.throughput) for i, r in measured if r.throughput and r.throughput.completed]
    mean = sum(t.per_second for _, t in done) / len(done) if done else 0.0
    each = ", ".join(f"{t.per_second:.1f} (#{i})" for i, t in done) or "–"
    failures = sum(len(r.throughput.failures) for _, r in measured if r.throughput)
    errors = sum(1 for _, r in measured if r.error)
    cpu = ", ".join(f"{_assistd_cpu_per_run(t) * 1000:.1f}" for _, t in done) or "–"
    line = (f"{name}: {mean:.1f} runs/s (rounds: {each}); {failures} failed runs, {errors} failed rounds; "
            f"assistd CPU per run (API + worker): {cpu} ms")
    return line, f"| {name} | **{mean:.1f}** | {each} | {failures} | {errors} | {cpu} |", mean


def _comparison_part(comp: Comparison) -> tuple[list[str], list[str]]:
    """The issue-11 figure: 1-worker runs/s of the current code ÷ the baseline commit's, same run."""
    title = f"1 worker, runs/s: the current code vs the baseline {comp.commit}, measured alternately in this run"
    if comp.error or not comp.rounds:
        why = comp.error or "no 1-worker round was measured"
        return [f"-- {title}", f"error: {why}"], [f"#### {title}", "", f"Error: `{why}`", ""]
    places = list(enumerate(comp.rounds, 1))
    old = [(i, r) for i, r in places if r.code != CURRENT.label]
    new = [(i, r) for i, r in places if r.code == CURRENT.label]
    old_line, old_row, old_mean = _code_row(f"baseline `{old[0][1].code}`", old)
    new_line, new_row, new_mean = _code_row(comp.current, new)
    ratio = f"{new_mean / old_mean:.2f}" if old_mean and new_mean else "–"
    order = " ".join("B" if r.code != CURRENT.label else "C" for r in comp.rounds)
    verdict = f"ratio current ÷ baseline: {ratio} (target ≥ 2×)"
    how = (f"Order of the rounds: {order} (B = baseline, C = current), each on a fresh database and fresh "
           "processes of its code (`git archive` of the commit's src/, imported through PYTHONPATH from the "
           "same virtualenv), same fake upstream, client and method; the current code's first round is the "
           "1-worker round below (it also has the cancel phase).")
    table = ["| code | runs/s (mean) | each round (#place) | failed runs | failed rounds | "
             "assistd CPU ms per run (API + worker), each round |", "| --- | --- | --- | --- | --- | --- |",
             old_row, new_row]
    lines = [f"-- {title}", old_line, new_line, verdict, how]
    md = [f"#### {title}", "", *table, "", f"**{verdict}**", "", how, ""]
    for i, r in places:
        if r is not new[0][1]:
            baseline = "baseline " if r.code != CURRENT.label else ""
            part = _round_part(r, 0.0, f"1 worker, {baseline}`{r.code}` code, round #{i}")
            lines += part[0]
            md += part[1]
    return lines, md


def render(rounds: list[Round], runs: int, cancels: int, comparison: Comparison | None = None) -> str:
    base = next((r.throughput.per_second for r in rounds if r.workers == 1 and r.throughput), 0.0)
    summary = ["| workers | runs/s | ratio vs 1 worker | failures | create→completed p50 / p99 | "
               f"cancel A p50 / p99 (target {TARGET}) | cancel B p50 / p99 |",
               "| --- | --- | --- | --- | --- | --- | --- |"]
    lines: list[str] = []
    details: list[str] = []
    cpu = ["| workers | API processes | workers (each) | fake upstream | client | postgres | redis "
           "| total / available |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        t, c = r.throughput, r.cancels
        if t and t.cpu:
            apis = [v for k, v in t.cpu.items() if k.startswith("api ")]
            own = [v for k, v in t.cpu.items() if k.startswith("worker ")]
            get = t.cpu.get
            cpu.append(f"| {r.workers} | {sum(apis):.1f} | {sum(own):.1f} ({' + '.join(f'{v:.1f}' for v in own)}) | "
                       f"{get('fake upstream', 0):.1f} | {get('benchmark client', 0):.1f} | "
                       f"{get('postgres (all backends)', 0):.1f} | {get('redis-server', 0):.1f} | "
                       f"{sum(t.cpu.values()):.1f} / {2 * t.wall:.1f} |")
        cells = [f"{t.per_second:.1f}", f"{t.per_second / base:.2f}" if base else "–", str(len(t.failures)),
                 _pq(t.to_completed)] if t else ["–"] * 4
        cells += [_pq(c.closed), _pq(c.cancelled)] if c else ["–"] * 2
        summary.append(f"| {r.workers} | " + " | ".join(cells) + " |")
        part = _round_part(r, base)
        lines += part[0]
        details += part[1]
    title = f"Scale-out: {', '.join(str(r.workers) for r in rounds)} workers on PostgreSQL + Redis"
    setup = (
        f"Per worker count: a fresh PostgreSQL database, {API_PROCESSES} × `assistd serve --no-worker` and W × "
        "`assistd worker` (default `ASSISTD_WORKER_CONCURRENCY`), one shared Redis. "
        f"**Runs/s:** {runs} runs on {runs} threads, at most {IN_FLIGHT} in flight from one client process, "
        "alternating between the two API processes, each started streaming (`runs.create(stream=True)`) "
        f"and timed to `thread.run.completed`; upstream reply {JOB_TOKENS} tokens {JOB_DELAY * 1000:.0f} ms apart; "
        "runs/s = completed runs / (first create → last completed); ratios are against this run's 1-worker "
        f"figure. **Cancel:** {cancels} streaming runs (upstream {CANCEL_TOKENS} tokens "
        f"{CANCEL_DELAY * 1000:.0f} ms apart), streams opened on API process 0, cancels sent to API process 1 "
        f"once every stream had a delta, {CANCEL_PACE * 1000:.0f} ms after each cancel's answer; t0 = just before "
        "the cancel request, A = the fake upstream's `ended_wall` (outcome `client_closed`), B = the stream "
        "receiving `thread.run.cancelled`."
    )
    note = (f"Note: this machine has {len(os.sched_getaffinity(0))} cores for the client, the fake upstream, "
            f"{API_PROCESSES} API processes, the workers, PostgreSQL and Redis: with 4 workers on 2 cores the "
            "figures measure contention as much as scaling. CPU seconds per process (from /proc/<pid>/stat; "
            "postgres and redis-server machine-wide) show where the time went.")
    compared: tuple[list[str], list[str]] = _comparison_part(comparison) if comparison else ([], [])
    markdown = [f"### {title}", "", setup, "", note, "", *compared[1], *summary, "",
                "CPU seconds in the runs/s phase (available = 2 cores × its wall time):", "", *cpu, "", *details]
    return report(title, [setup, note, *compared[0], *lines], markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)), help="worker counts, e.g. 1,2,4")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs in the runs/s phase")
    parser.add_argument("--cancels", type=int, default=CANCELS, help="runs cancelled in the cancel phase")
    parser.add_argument("--keep-logs", action="store_true", help="keep the assistd processes' logs (paths printed)")
    parser.add_argument("--baseline", default=DEFAULT, metavar="COMMIT",
                        help=f"measure the 1-worker runs/s of this commit's code too, alternately (default {DEFAULT}; "
                             "`none` skips)")
    parser.add_argument("--baseline-rounds", type=int, default=BASELINE_ROUNDS, metavar="N",
                        help="1-worker runs/s rounds of each code, in B C C B … order")
    args = parser.parse_args()
    counts = tuple(int(w) for w in args.workers.split(",") if w.strip())
    baseline = "" if args.baseline.lower() in ("", "none") else args.baseline
    main(lambda: run(counts, args.runs, args.cancels, args.keep_logs, baseline, max(1, args.baseline_rounds)))
