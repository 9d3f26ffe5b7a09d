"""The worker: claims queued runs from the database, runs each turn as a task, keeps its
leases alive, stops a run at once when it is cancelled, and settles runs nobody owns.

Every fact lives in the database; the in-process wake-ups only make things faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from assistd.domain.ids import new_id, now
from assistd.domain.run_state import RunStatus
from assistd.execution.executor import RunTurn, StopReason
from assistd.execution.runtime import Runtime
from assistd.execution.settle import settle

log = logging.getLogger("assistd.worker")
POLL_SECONDS = 1.0
SWEEP_SECONDS = 1.0


class Worker:
    def __init__(self, rt: Runtime, *, sole_owner: bool) -> None:
        self.rt = rt
        self.id = new_id("worker")
        self.concurrency = rt.settings.worker_concurrency
        # With SQLite, one process owns the database: at start every live run is orphaned.
        self.sole_owner = sole_owner
        self.turns: dict[str, tuple[RunTurn, asyncio.Task[None]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        rt.signals.on_cancel(self.stop_run)

    async def start(self) -> None:
        if self.sole_owner:
            await self.sweep(orphaned_before=math.inf)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="assistd-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="assistd-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="assistd-sweep"),
        ]
        self.rt.signals.run_queued()

    def stop_run(self, run_id: str, reason: str = StopReason.CANCEL) -> bool:
        """Stop a turn this process is executing; the turn settles the run itself."""
        entry = self.turns.get(run_id)
        if entry is None:
            return False
        turn, task = entry
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
            except Exception:
                log.exception("claiming runs failed; retrying")

    async def _claim_available(self) -> None:
        while not self._stopping and len(self.turns) < self.concurrency:
            run = await self.rt.store.claim_next_run(self.id)
            if run is None:
                return
            self.rt.broker.publish(run["id"], "thread.run.in_progress", run)
            self._start_turn(run)

    def _start_turn(self, run: dict[str, Any]) -> None:
        turn = RunTurn(self.rt, run)
        task = asyncio.create_task(turn.execute(), name=f"run-{run['id']}")
        self.turns[run["id"]] = (turn, task)
        task.add_done_callback(lambda _: self._turn_done(run["id"]))

    def _turn_done(self, run_id: str) -> None:
        self.turns.pop(run_id, None)
        if len(self.turns) == self.concurrency - 1:
            self.rt.signals.run_queued()

    # ------------------------------------------------------------ leases

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(min(self.rt.settings.heartbeat_seconds, POLL_SECONDS))
            try:
                cancelling = await self.rt.store.heartbeat(self.id, list(self.turns), time.time())
            except Exception:
                log.exception("heartbeat failed")
                continue
            for run_id in cancelling:  # the polling fallback for a missed wake-up
                self.stop_run(run_id)

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep(orphaned_before=time.time() - self.rt.settings.lease_seconds)
            except Exception:
                log.exception("sweep failed")

    async def sweep(self, orphaned_before: float) -> None:
        """Settle runs whose worker is gone, and expire runs past `expires_at`."""
        store = self.rt.store
        for row in await store.stale_runs(orphaned_before):
            if row["id"] in self.turns:
                continue
            if row["status"] == RunStatus.CANCELLING:
                await settle(store, self.rt.broker, row["id"], RunStatus.CANCELLED)
            else:
                error = {"code": "server_error", "message": "The process executing the run stopped unexpectedly."}
                await settle(store, self.rt.broker, row["id"], RunStatus.FAILED,
                             only_from=(RunStatus.IN_PROGRESS.value,), last_error=error)
        for row in await store.expirable_runs(now()):
            await settle(store, self.rt.broker, row["id"], RunStatus.EXPIRED)

    # ------------------------------------------------------------ stopping

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running turns `grace` seconds, then end the rest as failed."""
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        tasks = [task for _, task in self.turns.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for run_id in list(self.turns):
            self.stop_run(run_id, StopReason.SHUTDOWN)
        remaining = [task for _, task in self.turns.values()]
        if remaining:
            await asyncio.wait(remaining, timeout=5)
