"""The run lifecycle without processes: every status change, race and recovery, through
lifecycle/changes.py, on the in-memory store and on each database backend (the same
test on each, so the memory store is held to the SQL's answers)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from assistd.domain import objects as o
from assistd.domain.errors import InvalidRequest, NotFound
from assistd.execution.broker import LocalBroker
from assistd.execution.signals import LocalSignals
from assistd.execution.sweeper import ORPHANED, recover_orphan
from assistd.lifecycle import changes
from assistd.lifecycle.changes import Left, Lifecycle
from assistd.lifecycle.memory import MemoryRuns
from assistd.lifecycle.records import Run, RunRow, Step, Usage
from assistd.lifecycle.run_sql import RunSQL
from assistd.lifecycle.states import TRANSITIONS, IllegalTransition, RunStatus, allowed_from
from assistd.storage.db import open_database
from assistd.storage.migrate import migrate
from assistd.storage.store import Store
from tests.conftest import BACKENDS
from tests.support.server import drop_postgres_database, fresh_postgres_url

S = RunStatus
USAGE: Usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class Recorder(LocalBroker):
    """The broker, remembering every event published."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def publish(self, run_id: str, event: str, data: Any) -> None:
        self.events.append((run_id, event))
        super().publish(run_id, event, data)


class World:
    """A lifecycle over one store, and how a test makes threads in it."""

    def __init__(self, lc: Lifecycle, store: Store | None) -> None:
        self.lc = lc
        self.store = store
        self.broker: Recorder = lc.broker  # type: ignore[assignment]
        self.signals: LocalSignals = lc.signals  # type: ignore[assignment]

    async def thread(self) -> str:
        thread = o.new_thread({})
        if self.store is None:
            assert isinstance(self.lc.records, MemoryRuns)
            self.lc.records.add_thread(thread["id"])
        else:
            await self.store.insert_thread(thread, [])
        return str(thread["id"])

    async def queued(self) -> Run:
        row: RunRow = o.new_run_row(await self.thread(), o.new_assistant({"model": "m"}), {}, 600)  # type: ignore[assignment]
        async with self.lc.records.transaction() as tx:
            return await changes.create(tx, self.lc.records, row, [])

    async def running(self, worker: str = "w1") -> Run:
        run = await self.queued()
        started = await changes.start(self.lc, worker, 100)
        assert [r["id"] for r in started] == [run["id"]]
        return started[0]

    async def open_step(self, run: Run) -> Step:
        step: Step = o.new_step(dict(run), "tool_calls", {"type": "tool_calls", "tool_calls": []})  # type: ignore[assignment]
        async with self.lc.records.transaction() as tx:
            await self.lc.records.insert_step(tx, step)
        return step

    async def status(self, run_id: str) -> str:
        run = await self.lc.records.get_run_by_id(run_id)
        assert run is not None
        return run["status"]


@pytest.fixture(params=["memory", *BACKENDS])
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """`memory`, or the URL of a database no other test uses."""
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'unit.db'}"
    else:
        url = fresh_postgres_url()
        yield url
        drop_postgres_database(url)


@asynccontextmanager
async def world(kind: str) -> AsyncIterator[World]:
    if kind == "memory":
        yield World(Lifecycle(MemoryRuns(), Recorder(), LocalSignals()), None)
        return
    db = open_database(kind)
    await db.connect()
    try:
        await migrate(db)
        yield World(Lifecycle(RunSQL(db), Recorder(), LocalSignals()), Store(db))
    finally:
        await db.close()


def run_in(kind: str, scenario: Any) -> Any:
    async def main() -> Any:
        async with world(kind) as w:
            return await scenario(w)

    return asyncio.run(main())


# ---------------------------------------------------------------- the table is binding


def test_a_guard_naming_a_status_the_table_does_not_lead_from_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        allowed_from(S.COMPLETED, (S.QUEUED,))
    with pytest.raises(IllegalTransition):
        allowed_from(S.QUEUED, (S.CANCELLING,))
    assert allowed_from(S.CANCELLED, (S.REQUIRES_ACTION,)) == ("requires_action",)


def test_every_write_of_every_scenario_is_a_transition_of_the_table() -> None:
    async def scenarios(w: World) -> list[tuple[str, str, str]]:
        records = w.lc.records
        assert isinstance(records, MemoryRuns)
        queued = await w.queued()
        await changes.cancel(w.lc, queued["thread_id"], queued["id"])
        run = await w.running()
        await changes.cancel(w.lc, run["thread_id"], run["id"])
        async with records.transaction() as tx:
            await changes.finish_cancel(tx, records, run["id"], left=None)
        run = await w.running()
        async with records.transaction() as tx:
            await changes.require_action(tx, records, run["id"], action=_action())
        await changes.submit_tool_outputs(w.lc, run["thread_id"], run["id"], [])
        run = (await changes.start(w.lc, "w1", 1))[0]
        async with records.transaction() as tx:
            await changes.complete(tx, records, run["id"], usage=USAGE)
        run = await w.running()
        await changes.hand_back(w.lc, run["id"])
        run = (await changes.start(w.lc, "w1", 1))[0]
        async with records.transaction() as tx:
            await changes.fail(tx, records, run["id"], error=ORPHANED, left=None)
        await changes.settle_alone(w.lc, (await w.queued())["id"], S.EXPIRED, status=S.QUEUED)
        return records.writes

    writes = run_in("memory", scenarios)
    assert len(writes) >= 12
    for _, before, after in writes:
        assert S(after) in TRANSITIONS[S(before)], (before, after)


def _action() -> Any:
    return {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": []}}


# ---------------------------------------------------------------- cancel


def test_cancel_of_a_queued_run_cancels_it_at_once_and_frees_its_thread(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.queued()
        cancelled = await changes.cancel(w.lc, run["thread_id"], run["id"])
        assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"] is not None
        assert (run["id"], "thread.run.cancelled") in w.broker.events
        row: RunRow = o.new_run_row(run["thread_id"], o.new_assistant({"model": "m"}), {}, 600)  # type: ignore[assignment]
        async with w.lc.records.transaction() as tx:  # the thread takes a new run
            assert (await changes.create(tx, w.lc.records, row, []))["status"] == "queued"

    run_in(store_kind, scenario)


def test_cancel_of_a_generating_run_tells_its_worker_and_the_turn_ends_it_cancelled(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        told: list[str] = []

        def tell(run_id: str) -> bool:
            told.append(run_id)
            return True

        w.signals.on_cancel(tell)
        run = await w.running()
        step = await w.open_step(run)
        cancelling = await changes.cancel(w.lc, run["thread_id"], run["id"])
        assert cancelling["status"] == "cancelling" and told == [run["id"]]
        async with w.lc.records.transaction() as tx:
            settled = await changes.finish_cancel(tx, w.lc.records, run["id"], left=Left(USAGE, [step], []))
        assert settled is not None
        settled.publish(w.broker)
        assert settled.run["status"] == "cancelled" and settled.run["usage"] == USAGE
        assert [s["status"] for s in await w.lc.records.run_steps(run["id"])] == ["cancelled"]
        assert [e for r, e in w.broker.events if r == run["id"]][-2:] == [
            "thread.run.step.cancelled", "thread.run.cancelled"]

    run_in(store_kind, scenario)


def test_cancel_of_a_finished_run_is_refused_as_openai_words_it(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running()
        async with w.lc.records.transaction() as tx:
            await changes.complete(tx, w.lc.records, run["id"], usage=USAGE)
        with pytest.raises(InvalidRequest, match=re.escape("Cannot cancel run with status 'completed'.")):
            await changes.cancel(w.lc, run["thread_id"], run["id"])

    run_in(store_kind, scenario)


def test_cancel_naming_another_threads_run_is_not_found_and_changes_nothing(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running()
        with pytest.raises(NotFound):
            await changes.cancel(w.lc, "thread_someone_else", run["id"])
        assert await w.status(run["id"]) == "in_progress"
        assert (run["id"], "thread.run.cancelling") not in w.broker.events

    run_in(store_kind, scenario)


def test_a_change_alone_may_only_enter_an_active_status(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running()
        with pytest.raises(ValueError, match="use transition"):
            await w.lc.records.transition_alone(run["thread_id"], run["id"], RunStatus.CANCELLED,
                                                allowed_from(RunStatus.CANCELLED))
        assert await w.status(run["id"]) == "in_progress"

    run_in(store_kind, scenario)


def test_cancel_and_completion_racing_have_exactly_one_winner(store_kind: str) -> None:
    async def one_race(w: World) -> tuple[bool, str]:
        run = await w.running()

        async def completing() -> bool:
            async with w.lc.records.transaction() as tx:
                return await changes.complete(tx, w.lc.records, run["id"], usage=USAGE) is not None

        won, cancel = await asyncio.gather(completing(), changes.cancel(w.lc, run["thread_id"], run["id"]),
                                           return_exceptions=True)
        final = await w.status(run["id"])
        assert won is True or isinstance(cancel, dict), (won, cancel)
        assert (won is True) == (final == "completed")
        assert isinstance(cancel, InvalidRequest) == (final == "completed")
        return won is True, final

    async def scenario(w: World) -> None:
        for _ in range(15):
            won, final = await one_race(w)
            assert final in ("completed", "cancelling") and won == (final == "completed")

    run_in(store_kind, scenario)


# ---------------------------------------------------------------- tool outputs


def test_tool_outputs_requeue_a_waiting_run_and_complete_its_step(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running()
        step = await w.open_step(run)
        step["step_details"]["tool_calls"] = [{"id": "call_1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}", "output": None}}]
        action: Any = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}
        async with w.lc.records.transaction() as tx:
            await w.lc.records.save_step(tx, step)
            waiting = await changes.require_action(tx, w.lc.records, run["id"], action=action)
        assert waiting is not None and waiting["required_action"] == action
        with pytest.raises(InvalidRequest, match="Expected tool outputs for call_ids"):
            await changes.submit_tool_outputs(w.lc, run["thread_id"], run["id"], [{"tool_call_id": "x"}])
        queued, steps = await changes.submit_tool_outputs(
            w.lc, run["thread_id"], run["id"], [{"tool_call_id": "call_1", "output": "42"}])
        assert queued["status"] == "queued" and queued["required_action"] is None
        assert [s["step_details"]["tool_calls"][0]["function"]["output"] for s in steps] == ["42"]
        assert w.signals.queued.is_set()
        with pytest.raises(InvalidRequest, match=re.escape('Runs in status "queued" do not accept tool outputs.')):
            await changes.submit_tool_outputs(w.lc, run["thread_id"], run["id"], [{"tool_call_id": "call_1"}])

    run_in(store_kind, scenario)


# ---------------------------------------------------------------- workers and recovery


def test_workers_claiming_at_once_take_each_queued_run_exactly_once(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        created = [(await w.queued())["id"] for _ in range(30)]
        claimed: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}

        async def worker(name: str) -> None:
            while got := await changes.start(w.lc, name, 3):
                assert len(got) <= 3 and all(r["status"] == "in_progress" for r in got)
                claimed[name].extend(r["id"] for r in got)

        await asyncio.gather(*(worker(name) for name in claimed))
        taken = [run_id for runs in claimed.values() for run_id in runs]
        assert sorted(taken) == sorted(created)
        for runs in claimed.values():
            assert runs == sorted(runs, key=created.index)

    run_in(store_kind, scenario)


def test_an_orphan_that_wrote_nothing_is_queued_again_for_any_worker(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running("dead")
        await recover_orphan(w.lc, run["id"], S.IN_PROGRESS, "dead")
        assert await w.status(run["id"]) == "queued"
        assert [r["id"] for r in await changes.start(w.lc, "alive", 5)] == [run["id"]]
        await recover_orphan(w.lc, run["id"], S.IN_PROGRESS, "dead")  # another sweeper, too late
        assert await w.status(run["id"]) == "in_progress"

    run_in(store_kind, scenario)


def test_an_orphan_mid_turn_fails_with_a_server_error_and_its_step_fails_too(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running("dead")
        await w.open_step(run)
        await recover_orphan(w.lc, run["id"], S.IN_PROGRESS, "dead")
        failed = await w.lc.records.get_run_by_id(run["id"])
        assert failed is not None and failed["status"] == "failed" and failed["last_error"] == ORPHANED
        assert [s["status"] for s in await w.lc.records.run_steps(run["id"])] == ["failed"]
        assert await w.lc.records.stale_runs(math.inf) == []

    run_in(store_kind, scenario)


def test_a_cancelling_orphan_ends_cancelled(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running("dead")
        await changes.cancel(w.lc, run["thread_id"], run["id"])
        stale = await w.lc.records.stale_runs(time.time() + 60)
        assert [(r["id"], r["status"], r["worker_id"]) for r in stale] == [(run["id"], "cancelling", "dead")]
        await recover_orphan(w.lc, run["id"], S.CANCELLING, "dead")
        assert await w.status(run["id"]) == "cancelled"

    run_in(store_kind, scenario)


def test_a_lease_renewed_by_its_worker_is_not_stale(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running("w1")
        assert await w.lc.records.heartbeat("w1", [run["id"]], time.time() + 100) == {run["id"]: "in_progress"}
        assert await w.lc.records.heartbeat("other", [run["id"]], time.time()) == {}
        assert await w.lc.records.stale_runs(time.time() + 50) == []

    run_in(store_kind, scenario)


def test_waiting_runs_past_their_expiry_expire_but_running_ones_are_left_to_their_turn(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        running = await w.running()
        waiting = await w.queued()
        assert {r["id"] for r in await w.lc.records.expirable_runs(10**12)} == {waiting["id"]}
        await changes.settle_alone(w.lc, waiting["id"], S.EXPIRED, status=S.QUEUED)
        assert await w.status(waiting["id"]) == "expired"
        assert await w.status(running["id"]) == "in_progress"

    run_in(store_kind, scenario)


def test_a_run_settled_from_outside_its_turn_sums_its_steps_usage(store_kind: str) -> None:
    async def scenario(w: World) -> None:
        run = await w.running()
        step = await w.open_step(run)
        step["usage"], step["status"] = USAGE, "completed"
        async with w.lc.records.transaction() as tx:
            await w.lc.records.save_step(tx, step)
        await w.open_step(run)
        settled = await changes.settle_alone(w.lc, run["id"], S.FAILED, status=S.IN_PROGRESS, error=ORPHANED)
        assert settled is not None and settled.run["usage"] == USAGE
        assert [s["status"] for s in settled.steps] == ["failed"]

    run_in(store_kind, scenario)
