"""The run store in memory: the same answers as `RunSQL`, for testing the lifecycle without
a database or processes (every transition, race and recovery, in milliseconds).

Transactions are serialized by one lock, as SQLite's single writer serializes them; a
transaction that raises is not rolled back (no change writes before its last check).
Objects are copied in and out, as a database would, so callers can't share state by accident.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from assistd.domain.errors import invalid, not_found
from assistd.domain.ids import now
from assistd.lifecycle.records import Message, Run, RunRow, Step
from assistd.lifecycle.run_sql import new_run, writable
from assistd.lifecycle.run_store import Tx
from assistd.lifecycle.states import ACTIVE, CLAIMABLE, EXPIRABLE, STALE, RunStatus


class MemoryRuns:
    def __init__(self) -> None:
        self.threads: dict[str, str | None] = {}  # thread id → its active run
        self.runs: dict[str, Run] = {}  # in creation order
        self.leases: dict[str, tuple[str | None, float | None]] = {}  # run id → worker, heartbeat
        self.steps: dict[str, Step] = {}
        self.messages: dict[str, Message] = {}
        self._lock = asyncio.Lock()
        self.writes: list[tuple[str, str, str]] = []  # (run id, from, to) of every status change

    # ------------------------------------------------------------ set-up, for tests

    def add_thread(self, thread_id: str) -> None:
        self.threads[thread_id] = None

    def delete_thread(self, thread_id: str) -> None:
        """As the database's cascade does: the thread with its runs, steps and messages."""
        self.threads.pop(thread_id, None)
        gone = {r for r, run in self.runs.items() if run["thread_id"] == thread_id}
        for run_id in gone:
            del self.runs[run_id]
        self.steps = {k: s for k, s in self.steps.items() if s["thread_id"] != thread_id}
        self.messages = {k: m for k, m in self.messages.items() if m["thread_id"] != thread_id}

    # ------------------------------------------------------------ runs

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._lock:
            yield self

    async def lock_thread_of_run(self, tx: Tx, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return run is not None and run["thread_id"] in self.threads

    async def insert_run(self, tx: Tx, row: RunRow, additional: Sequence[Mapping[str, Any]]) -> Run:
        thread_id = row["thread_id"]
        if thread_id not in self.threads:
            raise not_found("thread", thread_id)
        if (active := self.threads[thread_id]) is not None:
            raise invalid(f"Thread {thread_id} already has an active run {active}.")
        self.threads[thread_id] = row["id"]
        for message in additional:
            self.messages[message["id"]] = copy.deepcopy(message)  # type: ignore[assignment]
        run = new_run(row)
        self.runs[run["id"]] = copy.deepcopy(run)
        self.leases[run["id"]] = (None, None)
        return run

    async def get_run(self, thread_id: str, run_id: str, tx: Tx | None = None) -> Run:
        run = self.runs.get(run_id)
        if run is None or run["thread_id"] != thread_id:
            raise not_found("run", run_id)
        return copy.deepcopy(run)

    async def get_run_by_id(self, run_id: str, tx: Tx | None = None) -> Run | None:
        run = self.runs.get(run_id)
        return None if run is None else copy.deepcopy(run)

    async def transition(self, tx: Tx, run_id: str, target: RunStatus, allowed: tuple[str, ...], *,
                         holder: str | None = None, columns: Mapping[str, Any] | None = None) -> Run | None:
        sets = writable(columns)  # refused before anything changes, as the SQL is
        run = self.runs.get(run_id)
        if run is None or run["status"] not in allowed:
            return None
        worker, beat = self.leases[run_id]
        if holder is not None and worker != holder:
            return None
        self.writes.append((run_id, run["status"], target.value))
        run["status"] = target.value
        for key, value in sets.items():
            if key == "worker_id":
                worker = value
            elif key == "heartbeat_at":
                beat = value
            else:
                run[key] = json.loads(json.dumps(value))  # type: ignore[literal-required]
        self.leases[run_id] = (worker, beat)
        if target not in ACTIVE and self.threads.get(run["thread_id"]) == run_id:
            self.threads[run["thread_id"]] = None
        return copy.deepcopy(run)

    async def transition_alone(self, thread_id: str, run_id: str, target: RunStatus,
                               allowed: tuple[str, ...]) -> Run | None:
        if target not in ACTIVE:
            raise ValueError(f"{target.value} releases the thread's lock: use transition()")
        async with self._lock:
            run = self.runs.get(run_id)
            if run is None or run["thread_id"] != thread_id:
                return None
            return await self.transition(self, run_id, target, allowed)

    async def claim(self, worker_id: str, limit: int) -> list[Run]:
        async with self._lock:
            picked = [r for r in self.runs.values() if r["status"] in CLAIMABLE][:limit]
            claimed = []
            for run in picked:
                self.writes.append((run["id"], run["status"], RunStatus.IN_PROGRESS.value))
                run["status"] = RunStatus.IN_PROGRESS.value
                run["started_at"] = now()
                self.leases[run["id"]] = (worker_id, float(now()))
                claimed.append(copy.deepcopy(run))
            return claimed

    async def heartbeat(self, worker_id: str, run_ids: list[str], at: float) -> dict[str, str]:
        held = {}
        for run_id in run_ids:
            if run_id in self.runs and self.leases[run_id][0] == worker_id:
                self.leases[run_id] = (worker_id, at)
                held[run_id] = self.runs[run_id]["status"]
        return held

    async def stale_runs(self, older_than: float) -> list[dict[str, Any]]:
        def lapsed(run_id: str) -> bool:
            beat = self.leases[run_id][1]
            return beat is None or beat < older_than

        return [{"id": r["id"], "status": r["status"], "worker_id": self.leases[r["id"]][0]}
                for r in self.runs.values() if r["status"] in STALE and lapsed(r["id"])]

    async def expirable_runs(self, at: int) -> list[dict[str, Any]]:
        return [{"id": r["id"], "status": r["status"]} for r in self.runs.values()
                if r["status"] in EXPIRABLE and r["expires_at"] is not None and r["expires_at"] <= at]

    # ------------------------------------------------------------ steps and messages

    async def has_open_step(self, run_id: str) -> bool:
        return any(s["run_id"] == run_id and s["status"] == "in_progress" for s in self.steps.values())

    async def insert_step(self, tx: Tx, step: Step) -> None:
        self.steps[step["id"]] = copy.deepcopy(step)

    async def save_step(self, tx: Tx, step: Step) -> None:
        if step["id"] in self.steps:
            self.steps[step["id"]] = copy.deepcopy(step)

    async def run_steps(self, run_id: str, tx: Tx | None = None) -> list[Step]:
        return [copy.deepcopy(s) for s in self.steps.values() if s["run_id"] == run_id]

    async def insert_message(self, tx: Tx, message: Message) -> None:
        self.messages[message["id"]] = copy.deepcopy(message)

    async def save_message(self, tx: Tx, message: Message) -> None:
        if message["id"] in self.messages:
            self.messages[message["id"]] = copy.deepcopy(message)

    async def run_messages(self, run_id: str, tx: Tx | None = None) -> list[Message]:
        return [copy.deepcopy(m) for m in self.messages.values() if m["run_id"] == run_id]

    async def thread_messages(self, thread_id: str) -> list[Message]:
        return [copy.deepcopy(m) for m in self.messages.values() if m["thread_id"] == thread_id]
