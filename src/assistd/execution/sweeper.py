"""Settles runs nobody is executing any more, in every process (API or worker).

- a run whose worker stopped renewing its lease (killed, machine gone) is resumed when its
  interrupted turn had written nothing (it goes back to `queued`), and otherwise ends
  `failed` with `server_error`; a `cancelling` one ends `cancelled`;
- a run still `queued` or `requires_action` at `expires_at` ends `expired`.

Several sweepers may find the same run: each change is a guarded transition, so one wins.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection

from assistd.domain.ids import now
from assistd.execution.runtime import Runtime
from assistd.lifecycle import changes
from assistd.lifecycle.changes import Lifecycle
from assistd.lifecycle.records import LastError
from assistd.lifecycle.states import RunStatus
from assistd.storage.db import DatabaseUnavailable
from assistd.storage.vector_stores import VectorStoreStore

log = logging.getLogger("assistd.sweeper")
SWEEP_SECONDS = 1.0
PURGE_EVERY = 60  # sweeps between purges of expired vector stores' chunks
ORPHANED: LastError = {"code": "server_error", "message": "The process executing the run stopped unexpectedly."}


class Sweeper:
    def __init__(self, rt: Runtime, owned: Callable[[], Collection[str]] = frozenset) -> None:
        self.rt = rt
        self.owned = owned  # runs this process executes: never orphans
        self._task: asyncio.Task[None] | None = None
        self._sweeps = 0
        self._unreachable_at = -math.inf  # when this process last found the database unavailable

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="assistd-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep(orphaned_before=self._orphaned_before())
            except DatabaseUnavailable as exc:
                self._unreachable_at = time.time()
                log.warning("sweep failed, the database is unavailable (%s)", exc)
            except Exception:
                log.exception("sweep failed")

    def _orphaned_before(self) -> float:
        """Leases older than this are lapsed. While the database was out of reach nobody
        could renew one: after an outage, workers get a whole lease to renew theirs."""
        lease = self.rt.settings.lease_seconds
        if time.time() - self._unreachable_at < lease:
            return -math.inf
        return time.time() - lease

    async def sweep(self, orphaned_before: float) -> None:
        owned, lc = self.owned(), self.rt.lifecycle
        for row in await lc.records.stale_runs(orphaned_before):
            if row["id"] not in owned:
                await recover_orphan(lc, row["id"], RunStatus(row["status"]), row["worker_id"])
        for row in await lc.records.expirable_runs(now()):  # a running turn expires itself
            await changes.settle_alone(lc, row["id"], RunStatus.EXPIRED, status=RunStatus(row["status"]))
        if self._sweeps % PURGE_EVERY == 0:
            for vector_store_id in await VectorStoreStore(self.rt.store.db).purge_expired():
                log.info("vector store %s expired: its chunks were deleted", vector_store_id)
        self._sweeps += 1


async def recover_orphan(lc: Lifecycle, run_id: str, status: RunStatus, holder: str | None) -> None:
    """A held run whose worker stopped renewing its lease. Every change is guarded by the
    dead worker still holding the run: another sweeper may have handed it back, and a live
    worker claimed it since."""
    if status is RunStatus.CANCELLING:
        if await changes.settle_alone(lc, run_id, RunStatus.CANCELLED, status=status, holder=holder):
            log.info("run %s was cancelling when its worker died: cancelled", run_id)
    elif not await lc.records.has_open_step(run_id):
        if await changes.hand_back(lc, run_id, holder):
            log.info("run %s lost its worker before writing anything: queued again", run_id)
    elif await changes.settle_alone(lc, run_id, RunStatus.FAILED, status=status, holder=holder, error=ORPHANED):
        log.warning("run %s lost its worker mid-turn: failed", run_id)
