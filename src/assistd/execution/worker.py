"""The worker: claims queued runs from the database, runs each turn as a task, keeps its
leases alive, and stops a run at once when it is cancelled.

Every fact lives in the database; wake-ups (LISTEN/NOTIFY or in-process) only make things
faster, and a poll every POLL_SECONDS stands in for any that get lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time

from assistd.domain.ids import new_id
from assistd.execution import code_tool
from assistd.execution.executor import RunTurn, StopReason
from assistd.execution.ingest import Ingester
from assistd.execution.runtime import Runtime
from assistd.execution.sweeper import Sweeper
from assistd.lifecycle import changes
from assistd.lifecycle.records import Run
from assistd.storage.db import DatabaseUnavailable

log = logging.getLogger("assistd.worker")
POLL_SECONDS = 1.0
CLAIM_BATCH = 100


def worker_id() -> str:
    """`host:pid:random`: which process holds a run can be read off the run's row."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('w').removeprefix('w_')[:8]}"


class Worker:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.id = worker_id()
        self.concurrency = max(1, rt.settings.worker_concurrency)
        self.turns: dict[str, tuple[RunTurn, asyncio.Task[None]]] = {}
        self.sweeper = Sweeper(rt, owned=lambda: self.turns.keys())  # noqa: PLW0108 - whatever self.turns is then
        self.ingester = Ingester(rt, self.id)  # vector store files, next to the runs
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        rt.signals.on_cancel(self.stop_run)

    async def start(self) -> None:
        if not self.rt.shared_database:  # SQLite is this process's alone: every live run is orphaned
            await self.sweeper.sweep(orphaned_before=math.inf)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="assistd-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="assistd-heartbeat"),
        ]
        self.sweeper.start()
        await self.ingester.start()
        self.rt.code_pool = code_tool.open_pool(self.rt.settings)
        self.rt.signals.queued.set()
        log.info("worker ready: %s takes up to %d runs", self.id, self.concurrency)

    @property
    def running(self) -> bool:
        """Claiming and heartbeating, as readiness asks."""
        return bool(self._loops) and not self._stopping and not any(loop.done() for loop in self._loops)

    def stop_run(self, run_id: str, reason: str = StopReason.CANCEL) -> bool:
        """Stop a turn this process is executing; the turn settles the run itself."""
        entry = self.turns.get(run_id)
        if entry is None:
            return False
        turn, task = entry
        if reason == StopReason.EXPIRE and turn.ending:
            return False
        if task.cancelling():  # told to stop already: cancelling again would cut its settling short
            return True
        turn.stop_reason = reason
        task.cancel()
        return True

    # ------------------------------------------------------------ claiming

    async def _claim_loop(self) -> None:
        queued = self.rt.signals.queued
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(queued.wait(), POLL_SECONDS)
            queued.clear()
            try:
                await self._claim_available()
            except DatabaseUnavailable as exc:
                log.warning("claiming runs failed, the database is unavailable (%s); retrying", exc)
            except Exception:
                log.exception("claiming runs failed; retrying")

    async def _claim_available(self) -> None:
        while not self._stopping and (free := self.concurrency - len(self.turns)) > 0:
            runs = await changes.start(self.rt.lifecycle, self.id, min(free, CLAIM_BATCH))
            for run in runs:
                self._start_turn(run)
            if len(runs) < min(free, CLAIM_BATCH):
                return

    def _start_turn(self, run: Run) -> None:
        turn = RunTurn(self.rt, run)
        task = asyncio.create_task(turn.execute(), name=f"run-{run['id']}")
        self.turns[run["id"]] = (turn, task)
        expiry = self._expire_later(run)
        task.add_done_callback(lambda _: self._turn_done(run["id"], expiry))

    def _expire_later(self, run: Run) -> asyncio.TimerHandle | None:
        """Stop the turn at the run's `expires_at`, however the upstream behaves meanwhile."""
        if run["expires_at"] is None:
            return None
        delay = max(0.0, float(run["expires_at"]) - time.time())
        return asyncio.get_running_loop().call_later(delay, self.stop_run, run["id"], StopReason.EXPIRE)

    def _turn_done(self, run_id: str, expiry: asyncio.TimerHandle | None = None) -> None:
        if expiry is not None:
            expiry.cancel()
        self.turns.pop(run_id, None)
        if len(self.turns) == self.concurrency - 1:
            self.rt.signals.queued.set()  # a slot is free again: look at the queue

    # ------------------------------------------------------------ leases

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(min(self.rt.settings.heartbeat_seconds, POLL_SECONDS))
            running = list(self.turns)
            try:
                held = await self.rt.lifecycle.records.heartbeat(self.id, running, time.time())
            except DatabaseUnavailable as exc:
                log.warning("heartbeat failed, the database is unavailable (%s)", exc)
                continue
            except Exception:
                log.exception("heartbeat failed")
                continue
            for run_id in running:
                status = held.get(run_id)
                if status == "cancelling":  # the polling fallback for a missed wake-up
                    self.stop_run(run_id)
                elif status is None and run_id in self.turns:
                    log.warning("run %s is no longer this worker's (lease lapsed); stopping it", run_id)
                    self.stop_run(run_id, StopReason.LOST)

    # ------------------------------------------------------------ stopping

    async def stop(self, grace: float) -> None:
        """Stop claiming and let running turns finish for `grace` seconds; then hand back
        the runs whose turn has written nothing yet and end the others `failed`."""
        self._stopping = True
        await self.ingester.stop()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        tasks = [task for _, task in self.turns.values()]
        if tasks:
            log.info("waiting up to %gs for %d running turns", grace, len(tasks))
            await asyncio.wait(tasks, timeout=grace)
        for run_id in list(self.turns):
            self.stop_run(run_id, StopReason.SHUTDOWN)
        remaining = [task for _, task in self.turns.values()]
        if remaining:
            await asyncio.wait(remaining, timeout=5)
        await self.sweeper.stop()
        if self.rt.code_pool is not None:
            await self.rt.code_pool.close()
