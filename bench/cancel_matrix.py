"""Cancel latency under every load shape: a matrix of deployments, client shapes and run states.

Deployments: SQLite in one process; PostgreSQL in one process; PostgreSQL + Redis split into an
`assistd serve --no-worker` API process and an `assistd worker` (the runs are created and
streamed through the API process, cancelled and polled through a second API process).

Cells, each with its own runs (a fresh thread each):
- *generating* × {streamed, polled, mix}: the upstream streams 20 tokens a second to every run;
  once every run is generating, each is cancelled in turn. *streamed*: every run is followed by
  `runs.create(stream=True)`; *polled*: runs made with `POST /v1/threads/runs` and no stream,
  each `GET` every POLL_BEFORE s by its own poller (create_and_poll clients, five times as eager
  as the SDK's default); *mix*: half of each.
- *queued*: the worker is full (its concurrency taken by filler runs), the runs wait in the queue.
- *requires_action*: the model called a function tool; the run waits for tool outputs.
- *code_interpreter*: the model's code runs in the sandbox (`time.sleep`), the kernel is interrupted.
- *file_search*: the model called file_search; the answer after the search is streaming.
The state cells are *mix* (half streamed, half polled).

Per run, t0 = the wall clock just before the cancel request:
- round trip: the cancel request answered;
- closed: the fake upstream saw assistd close that run's connection (its log's `ended_wall`), or,
  in the code_interpreter cell, the code's `except KeyboardInterrupt` wrote its clock to /mnt/data;
- GET: from t0, the run is `GET` every POLL_AFTER s until it shows `cancelled` (the answer's arrival);
- stream: a streamed run's stream received `thread.run.cancelled`.
The baseline, in every cell: streams the benchmark opens directly to the fake upstream and closes
between the cancels, timed like *closed* (the instrument's own delay under the same load).

Server side, from the logs: the worst event-loop stall (assistd.loop_lag) and the worst wait of a
database write for its turn (assistd.storage.write_wait), over the whole cell.

With `--baseline COMMIT`, each deployment is measured twice in the same run: first on that
commit's code (bench/baseline.py), then on the checkout's, so a machine slower or busier than
the last one shows in both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
from openai.types.beta import AssistantToolParam
from openai.types.beta.thread_create_params import ToolResources

from bench.baseline import CURRENT, Code, checkout_label, materialized
from bench.common import (
    PYTHON,
    Server,
    Upstream,
    async_client,
    database,
    free_port,
    main,
    ms,
    percentile,
    report,
    run_bounded,
    scratch_dir,
    spawn,
    upstream_process,
    wait_healthy,
)
from bench.scale_out import REDIS_URL, Worker, _stop_all, _wait_worker_ready

RUNS = 100  # per cell, as in the issue that found the one-second tail
CODE_RUNS = 10  # a sandboxed kernel each
CONTROLS = 5  # baseline streams per cell
PACE = 0.020  # between one cancel's answer and the next cancel
POLL_BEFORE, POLL_AFTER = 0.2, 0.010  # the SDK's create_and_poll waits 1 s between GETs
TOKENS, CHUNK_DELAY = 4000, 0.05  # 20 tokens a second for 200 s: every run is live when cancelled
SLACK = 10  # the worker takes RUNS + SLACK runs at once; as many fillers make the queued cell's runs wait
STATE_WAIT = 90.0  # for every run of a cell to reach its state
CELL_LIMIT = 150.0
TIME_LIMIT = 1500.0  # the whole matrix
KEEP_LOGS = False
TARGETS = {"round trip": (0.025, None), "closed": (0.025, 0.100), "GET": (0.050, None), "stream": (0.050, None)}
CODE = ("import time, pathlib\n"
        "pathlib.Path('/mnt/data/started-{tag}').write_text('1')\n"
        "try:\n    time.sleep(600)\n"
        "except KeyboardInterrupt:\n"
        "    pathlib.Path('/mnt/data/interrupted-{tag}').write_text(repr(time.time()))\n    raise\n")
WEB_HEADERS = {"Authorization": "Bearer bench", "OpenAI-Beta": "assistants=v2"}
STATES = ("generating", "queued", "requires_action", "code_interpreter", "file_search")
SHAPES = ("streamed", "polled", "mix")
DEPLOYMENTS = {"sqlite": "SQLite, one process", "postgresql": "PostgreSQL, one process",
               "split": "PostgreSQL + Redis, API and worker processes"}


# ---------------------------------------------------------------- the fake upstream


def serve_upstream() -> None:
    """In its own process: long text by default; a function call for `act-…`, a code_interpreter
    call for `code-…` and a file_search call for `search-…` markers. Each request is logged with
    its thread's first user message too, so a later request of a run (after file_search) is
    still found by the run's tag."""
    from tests.support.fake_upstream import FakeUpstream, Reply, message_text, serve_until_stopped

    long_text = Reply.text(" ".join(f"tok{i}" for i in range(TOKENS)), chunk_delay=CHUNK_DELAY)
    slow_text = Reply.text(" ".join(f"tok{i}" for i in range(600)), chunk_delay=1.0)  # fillers: cheap

    class MatrixUpstream(FakeUpstream):
        def _log(self, body: dict[str, Any], headers: dict[str, str]) -> Any:
            record = super()._log(body, headers)
            users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
            record.marker += " ||| " + (message_text(users[0].get("content")) if users else "")
            return record

        def _pick(self, marker: str) -> Reply:
            last = marker.split(" ||| ", 1)[0]
            if last.startswith("act-"):
                return Reply.tool_calls([("lookup", '{"q": "x"}')])
            if last.startswith("search-"):
                return Reply.tool_calls([("file_search", '{"query": "kiwi"}')])
            if last.startswith("fill-"):
                return slow_text
            if last.startswith("code-"):
                return Reply.tool_calls([("code_interpreter", json.dumps({"code": CODE.format(tag=last[5:])}))])
            return long_text

    serve_until_stopped(lambda: MatrixUpstream(long_text))


@contextlib.contextmanager
def matrix_upstream() -> Iterator[Upstream]:
    code = "from bench.cancel_matrix import serve_upstream; serve_upstream()"
    with upstream_process([PYTHON, "-c", code]) as upstream:
        yield upstream


# ---------------------------------------------------------------- deployments


@dataclass
class Deployment:
    key: str
    front: str  # creates and streams
    back: str  # cancels and polls (another process in the split deployment)
    code_dir: Path
    logs: list[Path]


@contextlib.contextmanager
def deploy(key: str, upstream: Upstream, database_url: str, code: Code = CURRENT) -> Iterator[Deployment]:
    data, code_dir = scratch_dir("matrix"), scratch_dir("code")
    code_dir.chmod(0o711)  # the sandbox uid binds folders under it
    env = {
        **os.environ, "ASSISTD_DATA_DIR": str(data), "ASSISTD_UPSTREAM_BASE_URL": upstream.base_url,
        "ASSISTD_UPSTREAM_API_KEY": "bench", "ASSISTD_DATABASE_URL": database_url,
        "ASSISTD_SHUTDOWN_GRACE_SECONDS": "2", "ASSISTD_WORKER_CONCURRENCY": str(RUNS + SLACK),
        "ASSISTD_CODE_DIR": str(code_dir), "ASSISTD_CODE_MAX_SESSIONS": str(CODE_RUNS + 2),
    }
    env.pop("ASSISTD_API_KEYS", None)
    env = code.env(env)
    if key == "split":
        env |= {"ASSISTD_REDIS_URL": REDIS_URL, "ASSISTD_EVENTS_TTL_SECONDS": "600"}
    procs: list[subprocess.Popen[Any]] = []
    try:
        if key == "split":
            subprocess.run([PYTHON, "-m", "assistd", "migrate"], cwd=data, env=env, timeout=60, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers = []
        for i in range(2 if key == "split" else 1):
            port, log_path = free_port(), data / f"api{i}.log"
            cmd = [PYTHON, "-m", "assistd", "serve", "--host", "127.0.0.1", "--port", str(port)]
            procs.append(proc := spawn(cmd + (["--no-worker"] if key == "split" else []), log_path, env))
            servers.append((proc, Server(f"http://127.0.0.1:{port}/v1", proc.pid, port, log_path)))
        logs = [s.log_path for _, s in servers]
        if key == "split":
            procs.append(proc := spawn([PYTHON, "-m", "assistd", "worker"], data / "worker.log", env))
            logs.append(data / "worker.log")
            _wait_worker_ready(proc, Worker("worker", proc.pid, data / "worker.log"), timeout=60)
        for proc, server in servers:
            wait_healthy(f"http://127.0.0.1:{server.port}/healthz", proc, server.log_path, timeout=60)
        urls = [s.base_url for _, s in servers]
        yield Deployment(key, urls[0], urls[-1], code_dir, logs)
    finally:
        _stop_all(procs)
        if KEEP_LOGS:
            print(f"logs kept in {data}", flush=True)
        else:
            shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(code_dir, ignore_errors=True)


# ---------------------------------------------------------------- one run


@dataclass
class Run:
    marker: str
    streamed: bool
    tag: str
    polled: bool = True  # a filler (it only keeps the worker busy) is not
    thread_id: str = ""
    run_id: str = ""
    status: str = ""  # last seen by a poller (polled runs) or the stream
    generating: asyncio.Event = field(default_factory=asyncio.Event)
    t0: float = 0.0
    answered: float | None = None
    answer_status: str = ""
    get_cancelled: float | None = None
    stream_cancelled: float | None = None
    deltas: list[str] = field(default_factory=list)  # the text a streamed run's stream delivered
    error: str = ""


@dataclass
class Cell:
    deployment: str
    state: str
    shape: str
    code: str = ""  # whose assistd, when a baseline commit is compared ("" otherwise)
    runs: list[Run] = field(default_factory=list)
    figures: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stored_ok: int = 0  # cancelled runs whose last message is `incomplete` (run_cancelled) with the text streamed
    stored_checked: int = 0
    marks: dict[Path, int] = field(default_factory=dict)  # server logs' sizes when the cancels began
    loop_stall: float = 0.0
    write_wait: float = 0.0
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.state}, {self.shape}"


class Bench:
    def __init__(self, dep: Deployment, upstream: Upstream) -> None:
        self.dep = dep
        self.upstream = upstream
        self.front = async_client(dep.front)
        self.back = async_client(dep.back)
        self.direct = async_client(upstream.base_url)
        # Streams and polling GETs go through aiohttp: it reads a response or a streamed event
        # for a fraction of httpx's CPU (bench/upstream_chunks.py), and the benchmark follows
        # 2,000 events and hundreds of GETs a second on the cores assistd runs on. The cancel
        # itself, the measured request, is the SDK's.
        self.web = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=WEB_HEADERS,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_read=120))
        self.assistants: dict[str, str] = {}
        self.background: list[asyncio.Task[None]] = []

    async def close(self) -> None:
        for client in (self.front, self.back, self.direct):
            await client.close()
        await self.web.close()

    async def assistant(self, state: str) -> str:
        if state not in self.assistants:
            by_state: dict[str, list[AssistantToolParam]] = {
                "requires_action": [{"type": "function", "function": {"name": "lookup", "parameters": {
                    "type": "object", "properties": {"q": {"type": "string"}}}}}],
                "code_interpreter": [{"type": "code_interpreter"}],
                "file_search": [{"type": "file_search"}],
            }
            tools = by_state.get(state, [])
            self.assistants[state] = (await self.front.beta.assistants.create(model="bench", tools=tools)).id
        return self.assistants[state]

    # ------------------------------------------------------------ starting runs

    async def start(self, run: Run, assistant_id: str, resources: ToolResources | None = None) -> None:
        try:
            if run.streamed:
                thread = await self.front.beta.threads.create(
                    messages=[{"role": "user", "content": run.marker}], tool_resources=resources or {})
                run.thread_id = thread.id
                self.background.append(asyncio.create_task(self._follow(run, assistant_id)))
            else:
                body = {"assistant_id": assistant_id, "thread": {
                    "messages": [{"role": "user", "content": run.marker}], "tool_resources": resources or {}}}
                async with self.web.post(f"{self.dep.front}/threads/runs", json=body) as answer:
                    answer.raise_for_status()
                    data = await answer.json()
                run.thread_id, run.run_id, run.status = data["thread_id"], data["id"], data["status"]
                if run.polled:
                    self.background.append(asyncio.create_task(self._poll(run)))
        except Exception as exc:  # noqa: BLE001 - reported with the cell
            run.error = f"start: {type(exc).__name__}: {exc}"
            run.generating.set()

    async def _follow(self, run: Run, assistant_id: str) -> None:
        """A streaming client. The SSE is parsed here with `json.loads`, not by the SDK's stream
        (a pydantic object per event): with 100 runs at 20 deltas a second that alone took a
        core of this machine, and a late client adds its lateness to every figure."""
        body = {"assistant_id": assistant_id, "stream": True}
        url = f"{self.dep.front}/threads/{run.thread_id}/runs"
        try:
            async with self.web.post(url, json=body) as answer:
                answer.raise_for_status()
                name = ""
                async for raw in answer.content:  # line by line
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: ") and name:
                        self._on_event(run, name, line[6:], time.time())
        except Exception as exc:  # noqa: BLE001
            run.error = f"stream: {type(exc).__name__}: {exc}"

    @staticmethod
    def _on_event(run: Run, name: str, data: str, now: float) -> None:
        if name == "thread.message.delta":
            delta = json.loads(data)["delta"]
            run.deltas += [p["text"].get("value") or "" for p in delta.get("content") or []
                           if p.get("type") == "text" and p.get("text")]
        elif name.startswith("thread.run.") and not name.startswith("thread.run.step."):
            obj = json.loads(data)
            run.run_id = run.run_id or obj["id"]
            run.status = obj.get("status", run.status)
            if name == "thread.run.cancelled":
                run.stream_cancelled = now

    async def status(self, run: Run) -> str:
        """The run's status, as `GET` (through the second API process) shows it."""
        async with self.web.get(f"{self.dep.back}/threads/{run.thread_id}/runs/{run.run_id}") as answer:
            answer.raise_for_status()
            return str((await answer.json())["status"])

    async def _poll(self, run: Run) -> None:
        """A create_and_poll client, eager: GET every POLL_BEFORE s until the run ends."""
        with contextlib.suppress(Exception):
            while not run.t0 and run.status in ("queued", "in_progress", "requires_action"):
                run.status = await self.status(run)
                await asyncio.sleep(POLL_BEFORE)

    # ------------------------------------------------------------ cancelling

    async def cancel(self, run: Run) -> None:
        run.t0 = time.time()
        try:
            answer = await self.back.beta.threads.runs.cancel(run.run_id, thread_id=run.thread_id)
            run.answer_status = answer.status
            run.answered = time.time()
        except Exception as exc:  # noqa: BLE001
            run.error = f"cancel: {type(exc).__name__}: {exc}"
            return
        self.background.append(asyncio.create_task(self._until_cancelled(run)))

    async def _until_cancelled(self, run: Run) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = await self.status(run)
            if status == "cancelled":
                run.get_cancelled = time.time()
                return
            if status not in ("cancelling", "in_progress", "queued", "requires_action"):
                run.error = f"ended {status}, not cancelled"
                return
            await asyncio.sleep(POLL_AFTER)
        run.error = "not cancelled within 30 s"


# ---------------------------------------------------------------- waiting for the state


async def _upstream_markers(upstream: Upstream) -> list[dict[str, Any]]:
    return await asyncio.to_thread(upstream.log)


async def wait_for_state(bench: Bench, cell: Cell) -> None:
    deadline = time.monotonic() + STATE_WAIT
    while time.monotonic() < deadline:
        pending = [r for r in cell.runs if not r.error and not await _in_state(bench, cell.state, r)]
        if not pending:
            await asyncio.sleep(0.5 if cell.state != "generating" else 1.2)  # a few tokens more, flushes due
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{cell.name}: runs not in state after {STATE_WAIT:.0f} s")


async def _in_state(bench: Bench, state: str, run: Run) -> bool:
    if not run.run_id:
        return False
    if state == "queued":
        return True
    if state == "requires_action":
        if run.status != "requires_action":
            run.status = await bench.status(run)
        return run.status == "requires_action"
    if state == "code_interpreter":
        return any(bench.dep.code_dir.glob(f"*/sessions/*/data/started-{run.tag}"))
    return run.generating.is_set()


async def mark_generating(bench: Bench, runs: list[Run], min_chunks: int = 3) -> None:
    """A run generates once its upstream request has sent a few chunks (from the upstream's log)."""
    log = await _upstream_markers(bench.upstream)
    live = {r["marker"] for r in log if r["outcome"] is None and r["chunks_sent"] >= min_chunks}
    for run in runs:
        if any(run.tag in marker for marker in live):
            run.generating.set()


# ---------------------------------------------------------------- one cell


async def control_stream(bench: Bench, marker: str, ready: asyncio.Event) -> None:
    with contextlib.suppress(openai.APIError):  # the upstream stopped at the end of the benchmark
        stream = await bench.direct.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": marker}], stream=True)
        async with stream:  # leaving it (the task is cancelled) closes the connection, as in assistd
            async for _ in stream:
                ready.set()


async def measure_cell(bench: Bench, cell: Cell) -> None:
    started = time.monotonic()
    tag = secrets.token_hex(3)
    cell.runs.extend(_cell_runs(cell, tag))
    fillers = await _fill_worker(bench, tag) if cell.state == "queued" else []
    resources = await _search_resources(bench, tag) if cell.state == "file_search" else None
    await _start_all(bench, cell.runs, await bench.assistant(cell.state), resources)
    controls = [(f"control {tag} {i}", asyncio.Event()) for i in range(CONTROLS)]
    control_tasks = [asyncio.create_task(control_stream(bench, m, ready)) for m, ready in controls]
    if cell.state in ("generating", "file_search"):
        await _wait_generating(bench, cell.runs)
    else:
        await wait_for_state(bench, cell)
    await asyncio.wait_for(asyncio.gather(*(ready.wait() for _, ready in controls)), 30)
    cell.marks = log_marks(bench.dep.logs)
    client_lag: list[float] = []
    ticker = asyncio.create_task(_tick(client_lag))
    control_t0 = await _cancel_all(bench, cell.runs, [m for m, _ in controls], control_tasks)
    for task in control_tasks:
        task.cancel()
    await _wait_ended(bench, cell.runs)
    ticker.cancel()
    await _cancel_fillers(bench, fillers)
    await asyncio.sleep(1.0)
    if cell.state in ("generating", "file_search"):
        await _check_stored(bench, cell)
    log = await _upstream_markers(bench.upstream)
    _collect(bench, cell, log, control_t0)
    cell.figures["client lag"] = client_lag
    cell.seconds = time.monotonic() - started


def _cell_runs(cell: Cell, tag: str) -> list[Run]:
    """The cell's runs: streamed or polled by its shape, each marked for the fake upstream."""
    count = CODE_RUNS if cell.state == "code_interpreter" else RUNS
    prefix = {"requires_action": "act-", "file_search": "search-", "code_interpreter": "code-"}.get(cell.state, "gen-")
    runs = []
    for i in range(count):
        streamed = cell.shape == "streamed" or (cell.shape == "mix" and i % 2 == 0)
        run_tag = f"{tag}r{i:03d}x"
        runs.append(Run(f"{prefix}{run_tag}", streamed, run_tag))
    return runs


async def _fill_worker(bench: Bench, tag: str) -> list[Run]:
    """Filler runs that take the worker's whole concurrency, so that the cell's runs stay queued."""
    fillers = [Run(f"fill-{tag}f{i:03d}x", False, f"{tag}f{i:03d}x", polled=False) for i in range(RUNS + SLACK)]
    await _start_all(bench, fillers, await bench.assistant("generating"), None)
    await _wait_generating(bench, fillers, min_chunks=1)
    return fillers


async def _cancel_all(bench: Bench, runs: list[Run], controls: list[str],
                      control_tasks: list[asyncio.Task[None]]) -> dict[str, float]:
    """Cancel each run in turn, PACE apart, closing a baseline stream (control) every len(runs) //
    CONTROLS cancels; returns each closed control's t0 by its marker."""
    control_t0: dict[str, float] = {}
    every = max(1, len(runs) // CONTROLS)
    for i, run in enumerate(runs, 1):
        if run.run_id and not run.error:
            await bench.cancel(run)
        await asyncio.sleep(PACE)
        if i % every == 0 and i // every <= CONTROLS:
            control_t0[controls[i // every - 1]] = time.time()
            control_tasks[i // every - 1].cancel()
            await asyncio.sleep(PACE)
    return control_t0


async def _cancel_fillers(bench: Bench, fillers: list[Run]) -> None:
    for run in fillers:
        if run.run_id:
            with contextlib.suppress(Exception):
                await bench.back.beta.threads.runs.cancel(run.run_id, thread_id=run.thread_id)


async def _tick(lags: list[float], every: float = 0.005) -> None:
    """The benchmark's own event-loop lag while it cancels: a late client adds to every figure."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(every)
        lags.append(max(0.0, time.monotonic() - before - every))


async def _check_stored(bench: Bench, cell: Cell) -> None:
    """A cancelled run keeps its partial answer: the last message is `incomplete` (run_cancelled)
    with text, and for a streamed run it is exactly the text its stream delivered."""
    semaphore = asyncio.Semaphore(10)

    async def check(run: Run) -> None:
        async with semaphore:
            last = (await bench.back.beta.threads.messages.list(run.thread_id, limit=1)).data[0]
        text = "".join(p.text.value for p in last.content if p.type == "text")
        reason = last.incomplete_details.reason if last.incomplete_details else None
        ok = last.role == "assistant" and last.status == "incomplete" and reason == "run_cancelled" and bool(text)
        if run.streamed and text != "".join(run.deltas):
            ok = False
        cell.stored_checked += 1
        cell.stored_ok += ok
        if not ok:
            cell.problems.append(f"{run.run_id}: last message {last.status} ({reason}), {len(text)} chars stored, "
                                 f"{len(''.join(run.deltas))} streamed")

    await asyncio.gather(*(check(run) for run in cell.runs if run.get_cancelled and not run.error))


async def _start_all(bench: Bench, runs: list[Run], assistant_id: str, resources: ToolResources | None) -> None:
    semaphore = asyncio.Semaphore(20)

    async def one(run: Run) -> None:
        async with semaphore:
            await bench.start(run, assistant_id, resources)

    await asyncio.gather(*(one(run) for run in runs))


async def _wait_generating(bench: Bench, runs: list[Run], min_chunks: int = 3) -> None:
    deadline = time.monotonic() + STATE_WAIT
    while time.monotonic() < deadline:
        await mark_generating(bench, runs, min_chunks)
        if all(r.generating.is_set() or r.error for r in runs):
            return  # at once, as in the issue: the runs' first partial-text flushes come during the cancels
        await asyncio.sleep(0.3)
    silent = [r.marker for r in runs if not r.generating.is_set()]
    raise TimeoutError(f"{len(silent)} runs not generating after {STATE_WAIT:.0f} s, e.g. {silent[0]}")


async def _wait_ended(bench: Bench, runs: list[Run]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(r.error or r.get_cancelled for r in runs if r.t0) and all(
                r.stream_cancelled or r.error or r.status == "requires_action" for r in runs if r.t0 and r.streamed):
            return
        await asyncio.sleep(0.1)


async def _search_resources(bench: Bench, tag: str) -> ToolResources:
    """One vector store for the cell's runs, with a file that mentions `kiwi`."""
    text = ("Kiwi notes. The kiwi is a flightless bird of New Zealand. " * 20).encode()
    file = await bench.front.files.create(file=(f"kiwi-{tag}.txt", text), purpose="assistants")
    store = await bench.front.vector_stores.create(name=f"kiwi {tag}", file_ids=[file.id])
    deadline = time.monotonic() + 60
    while store.file_counts.in_progress and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        store = await bench.front.vector_stores.retrieve(store.id)
    return {"file_search": {"vector_store_ids": [store.id]}}


def _collect(bench: Bench, cell: Cell, log: list[dict[str, Any]], control_t0: dict[str, float]) -> None:
    figures: dict[str, list[float]] = {"round trip": [], "closed": [], "GET": [], "stream": [], "baseline": []}
    by_tag = _upstream_by_tag(log)
    for run in cell.runs:
        if run.error:
            cell.problems.append(f"{run.run_id or run.marker[:30]}: {run.error}")
        if not run.t0:
            continue
        _collect_client_side(cell, run, figures)
        if cell.state == "code_interpreter":
            _collect_interrupted(bench, cell, run, figures)
        elif cell.state in ("generating", "file_search"):
            _collect_closed(cell, run, by_tag.get(run.tag), figures)
    figures["baseline"] = _baseline(log, control_t0)
    cell.figures = figures


def _upstream_by_tag(log: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each run's upstream request by its tag: the one assistd closed, if any, else the first."""
    by_tag: dict[str, dict[str, Any]] = {}
    for record in log:
        m = re.search(r"([0-9a-f]{6}r\d{3}x)", record["marker"])
        if m and (record["outcome"] == "client_closed" or m.group(1) not in by_tag):
            by_tag[m.group(1)] = record
    return by_tag


def _collect_client_side(cell: Cell, run: Run, figures: dict[str, list[float]]) -> None:
    """Round trip, GET and stream: what the clients saw of a cancelled run."""
    if run.answered is not None:
        figures["round trip"].append(run.answered - run.t0)
        if run.answer_status not in ("cancelling", "cancelled"):
            cell.problems.append(f"{run.run_id}: cancel answered {run.answer_status}")
    if run.get_cancelled is not None:
        figures["GET"].append(run.get_cancelled - run.t0)
    if run.streamed and cell.state != "requires_action":  # that stream ended at requires_action
        if run.stream_cancelled is not None:
            figures["stream"].append(run.stream_cancelled - run.t0)
        else:
            cell.problems.append(f"{run.run_id}: the stream got no thread.run.cancelled")


def _collect_interrupted(bench: Bench, cell: Cell, run: Run, figures: dict[str, list[float]]) -> None:
    """Closed, in the code_interpreter cell: the clock the code's `except KeyboardInterrupt` wrote."""
    found = list(bench.dep.code_dir.glob(f"*/sessions/*/data/interrupted-{run.tag}"))
    if found:
        figures["closed"].append(float(found[0].read_text()) - run.t0)
    else:
        cell.problems.append(f"{run.run_id}: the kernel's code was not interrupted")


def _collect_closed(cell: Cell, run: Run, record: dict[str, Any] | None, figures: dict[str, list[float]]) -> None:
    """Closed: when the fake upstream saw assistd close the run's connection."""
    if record and record["outcome"] == "client_closed":
        figures["closed"].append(record["ended_wall"] - run.t0)
    else:
        cell.problems.append(f"{run.run_id}: upstream outcome {record and record['outcome']!r}")


def _baseline(log: list[dict[str, Any]], control_t0: dict[str, float]) -> list[float]:
    """The baseline streams' closes, timed like *closed* from each control's t0."""
    out = []
    for record in log:
        marker = record["marker"].split(" ||| ", 1)[0]
        if marker in control_t0 and record["outcome"] == "client_closed":
            out.append(record["ended_wall"] - control_t0[marker])
    return out


# ---------------------------------------------------------------- server logs


STALL = re.compile(r"event loop stalled for (\d+) ms")
WAIT = re.compile(r"database write for .* waited (\d+) ms")


def log_marks(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_size if p.exists() else 0 for p in paths}


def log_worst(marks: dict[Path, int]) -> tuple[float, float, list[str]]:
    """The worst loop stall and write wait logged since `marks`, and other WARNING/ERROR lines."""
    stall = wait = 0.0
    other: list[str] = []
    for path, offset in marks.items():
        if not path.exists():
            continue
        with open(path, errors="replace") as f:
            f.seek(offset)
            text = f.read()
        stall = max([stall, *(int(v) / 1000 for v in STALL.findall(text))])
        wait = max([wait, *(int(v) / 1000 for v in WAIT.findall(text))])
        other += [line for line in text.splitlines() if (" ERROR " in line or "Traceback" in line)]
    return stall, wait, other


# ---------------------------------------------------------------- the matrix


def cells_for(states: tuple[str, ...], shapes: tuple[str, ...]) -> list[tuple[str, str]]:
    out = [("generating", shape) for shape in shapes] if "generating" in states else []
    return out + [(state, "mix") for state in states if state != "generating"]


async def measure_deployment(dep: Deployment, upstream: Upstream, cells: list[tuple[str, str]],
                             results: list[Cell], code: str = "") -> None:
    bench = Bench(dep, upstream)
    try:
        for state, shape in cells:
            cell = Cell(dep.key, state, shape, code)
            marks = log_marks(dep.logs)
            try:
                await asyncio.wait_for(measure_cell(bench, cell), CELL_LIMIT)
            except Exception as exc:  # noqa: BLE001 - one broken cell shouldn't hide the others
                cell.problems.insert(0, f"cell broke off: {type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    _collect(bench, cell, await _upstream_markers(upstream), {})
            cell.loop_stall, cell.write_wait, other = log_worst(cell.marks or marks)
            cell.problems += [f"server log: {line[:200]}" for line in other[:5]]
            results.append(cell)
            print(summary_line(cell), flush=True)
            for task in bench.background:
                task.cancel()
            await asyncio.gather(*bench.background, return_exceptions=True)
            bench.background.clear()
            await asyncio.sleep(1.0)
    finally:
        await bench.close()


def run(deployments: tuple[str, ...], states: tuple[str, ...], shapes: tuple[str, ...], baseline: str = "") -> str:
    """Every cell of each deployment; with a `baseline` commit, each deployment on its code first."""
    results: list[Cell] = []
    deadline = time.monotonic() + TIME_LIMIT * (2 if baseline else 1)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.monotonic()
    with matrix_upstream() as upstream, contextlib.ExitStack() as stack:
        codes = [stack.enter_context(materialized(baseline)), CURRENT] if baseline else [CURRENT]
        labels = {id(c): (checkout_label() if c is CURRENT else c.label) if baseline else "" for c in codes}
        for key in deployments:
            for code in codes:
                left = deadline - time.monotonic()
                if left < 30:
                    results.append(Cell(key, "—", "—", labels[id(code)],
                                        problems=["skipped: the matrix's time limit was reached"]))
                    continue
                cells = cells_for(states, shapes)
                db = "sqlite" if key == "sqlite" else "postgresql"
                with database(db) as url, deploy(key, upstream, url, code) as dep:
                    run_bounded_in_loop(measure_deployment(dep, upstream, cells, results, labels[id(code)]), left)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    return render(results, load_before, load_after, time.monotonic() - started)


def run_bounded_in_loop(coro: Any, limit: float) -> None:
    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
        run_bounded(coro, limit)


# ---------------------------------------------------------------- the report


def _pmax(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{percentile(values, 0.5) * 1000:.1f} / {percentile(values, 0.99) * 1000:.1f} / {max(values) * 1000:.0f}"


def misses(cell: Cell) -> list[str]:
    out = []
    for name, (p99, top) in TARGETS.items():
        values = cell.figures.get(name) or []
        if not values:
            continue
        if percentile(values, 0.99) > p99:
            out.append(f"{name} p99")
        if top is not None and max(values) > top:
            out.append(f"{name} max")
    return out


def _deployment(cell: Cell) -> str:
    name = DEPLOYMENTS.get(cell.deployment, cell.deployment)
    return f"{name} · {cell.code}" if cell.code else name


def summary_line(cell: Cell) -> str:
    parts = [f"{k}={_pmax(v)}" for k, v in cell.figures.items()]
    miss = misses(cell)
    return (f"[{_deployment(cell)}] {cell.name}: " + " ".join(parts)
            + f" loop-stall≤{ms(cell.loop_stall)} write-wait≤{ms(cell.write_wait)}"
            + (f" stored-ok={cell.stored_ok}/{cell.stored_checked}" if cell.stored_checked else "")
            + (f"  MISSES {', '.join(miss)}" if miss else "") + (f"  problems={len(cell.problems)}" if cell.problems else ""))


def render(results: list[Cell], load_before: list[str], load_after: list[str], seconds: float) -> str:
    title = "Cancel latency matrix"
    lines = [summary_line(c) for c in results]
    header = ("| deployment | state, clients | n | round trip | closed / interrupted | GET shows `cancelled` "
              "| stream gets `cancelled` | baseline | client lag | loop stall | write wait | partial answer kept | misses |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for c in results:
        f = c.figures
        rows.append(f"| {_deployment(c)} | {c.name} | {len(f.get('round trip', []))} "
                    f"| {_pmax(f.get('round trip', []))} | {_pmax(f.get('closed', []))} | {_pmax(f.get('GET', []))} "
                    f"| {_pmax(f.get('stream', []))} | {_pmax(f.get('baseline', []))} | {_pmax(f.get('client lag', []))} "
                    f"| {ms(c.loop_stall) if c.loop_stall else '< 100 ms'} "
                    f"| {ms(c.write_wait) if c.write_wait else '< 100 ms'} "
                    f"| {f'{c.stored_ok}/{c.stored_checked}' if c.stored_checked else '—'} | {', '.join(misses(c)) or 'none'} |")
    problems = [f"- {_deployment(c)}, {c.name}: {p}" for c in results for p in c.problems[:3]]
    markdown = [
        f"### {title}", "",
        (f"{RUNS} runs per cell ({CODE_RUNS} in the code_interpreter cell), cancels {PACE * 1000:.0f} ms apart; "
         f"upstream {TOKENS} tokens {CHUNK_DELAY * 1000:.0f} ms apart; polled runs `GET` every "
         f"{POLL_BEFORE * 1000:.0f} ms, every run every {POLL_AFTER * 1000:.0f} ms from its cancel on. "
         f"Each figure is p50 / p99 / max in ms, from t0 = just before the cancel request. "
         f"Load average {' '.join(load_before)} before, {' '.join(load_after)} after; {seconds:.0f} s in all."), "",
        ("Targets: closed (upstream connection, or kernel interrupted) p99 ≤ 25 ms and max ≤ 100 ms; round trip "
         "p99 ≤ 25 ms; `cancelled` visible to `GET` and to the stream p99 ≤ 50 ms. Loop stall and write wait: the "
         "worst logged by assistd during the cell's cancels (it logs those ≥ 100 ms). Partial answer kept: cancelled "
         "runs whose last message is `incomplete` (run_cancelled) with text, for streamed runs exactly the text "
         "streamed. Client lag: the benchmark's own event loop, how late a 5 ms timer fired during the cancels "
         "(its lateness is in every figure)."), "",
        header, *rows,
    ]
    if problems:
        markdown += ["", "Problems (first 3 per cell):", "", *problems]
    return report(title, lines, markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS), help="of: " + ", ".join(DEPLOYMENTS))
    parser.add_argument("--states", default=",".join(STATES), help="of: " + ", ".join(STATES))
    parser.add_argument("--shapes", default=",".join(SHAPES), help="for the generating state, of: " + ", ".join(SHAPES))
    parser.add_argument("--runs", type=int, default=RUNS, help="runs per cell")
    parser.add_argument("--keep-logs", action="store_true", help="keep assistd's data dirs (and logs)")
    parser.add_argument("--baseline", default="", help="also measure each deployment on this commit's code, first")
    args = parser.parse_args()
    RUNS, KEEP_LOGS = args.runs, args.keep_logs
    main(lambda: run(tuple(args.deployments.split(",")), tuple(args.states.split(",")), tuple(args.shapes.split(",")),
                     args.baseline))
