"""Every change of a run's status: one function each, one guarded write plus the stream
events that tell watchers about it.

The API (create, cancel, tool outputs), the worker (claim, turn endings, hand-back) and the
sweeper (expiry, crash recovery) all change runs through these functions and nothing else.
Each write's allowed from-statuses come from the transition table (`allowed_from`), so a
write the table doesn't allow fails loudly instead of happening.

Functions named after a status take an open transaction `tx` and return what to publish
once it commits (`Settled`, or the run): the turn writes its message and steps in the same
transaction. The ones that take a `Lifecycle` run their own transaction and publish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from assistd.domain.errors import invalid
from assistd.domain.ids import now
from assistd.execution.broker import Broker, Event
from assistd.execution.signals import Signals
from assistd.lifecycle.records import (
    IncompleteDetails,
    LastError,
    Message,
    RequiredAction,
    Run,
    RunRow,
    Step,
    Usage,
    add_usage,
    no_usage,
    usage_of,
)
from assistd.lifecycle.run_store import RunStore, Tx
from assistd.lifecycle.states import CANCELLABLE, RunStatus, allowed_from, cancel_target
from assistd.observability import runs as observed

S = RunStatus
GUARD_RETRIES = 5

# How the open step and message of a run end, for each way the run ends.
STEP_ENDS: dict[RunStatus, tuple[str, str]] = {
    S.CANCELLED: ("cancelled", "cancelled_at"),
    S.FAILED: ("failed", "failed_at"),
    S.EXPIRED: ("expired", "expired_at"),
    S.INCOMPLETE: ("cancelled", "cancelled_at"),
}
MESSAGE_REASONS: dict[RunStatus, str] = {
    S.CANCELLED: "run_cancelled",
    S.FAILED: "run_failed",
    S.EXPIRED: "run_expired",
    S.INCOMPLETE: "max_tokens",
}
# The run's own timestamp column for each final status that has one.
STAMPS: dict[RunStatus, str] = {S.CANCELLED: "cancelled_at", S.FAILED: "failed_at", S.COMPLETED: "completed_at"}


@dataclass
class Lifecycle:
    """What a change needs beyond its arguments: where runs are kept, who hears of them."""

    records: RunStore
    broker: Broker
    signals: Signals


@dataclass
class Settled:
    """A run that reached a final status, with the step and message it closed."""

    run: Run
    messages: list[Message] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def events(self) -> list[Event]:
        return [
            *(Event("thread.message.incomplete", m) for m in self.messages),
            *(Event(f"thread.run.step.{s['status']}", s) for s in self.steps),
            Event(f"thread.run.{self.run['status']}", self.run),
        ]

    def publish(self, broker: Broker) -> None:
        for event in self.events():
            broker.publish(self.run["id"], event.event, event.data)
        observed.settled(self.run)


@dataclass
class Left:
    """What a run left open when it ends, and its usage: given by a turn that reached its
    own end (it knows them), read from the database otherwise (`None`, or `left_open`)."""

    usage: Usage
    steps: list[Step] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


def _close_step(step: Step, target: RunStatus, error: LastError | None) -> Step:
    status, stamp = STEP_ENDS[target]
    closed: Any = {**step, "status": status, stamp: now()}
    if target is S.FAILED:
        closed["last_error"] = error
    return closed  # type: ignore[no-any-return]


def _close_message(message: Message, target: RunStatus) -> Message:
    return {**message, "status": "incomplete", "incomplete_at": now(),
            "incomplete_details": {"reason": MESSAGE_REASONS[target]}}


async def left_open(records: RunStore, tx: Tx, run_id: str) -> Left:
    """Read what the run left open, and its usage summed over its steps."""
    steps = await records.run_steps(run_id, tx)
    usage = no_usage()
    for step in steps:
        usage = add_usage(usage, usage_of(step.get("usage")))
    messages = [m for m in await records.run_messages(run_id, tx) if m["status"] == "in_progress"]
    return Left(usage, [s for s in steps if s["status"] == "in_progress"], messages)


async def _settle(tx: Tx, records: RunStore, run_id: str, target: RunStatus, left: Left | None, *,
                  only_from: tuple[RunStatus, ...] | None = None, holder: str | None = None,
                  release: bool = False, last_error: LastError | None = None,
                  incomplete_details: IncompleteDetails | None = None) -> Settled | None:
    """The guarded move to a final status, closing what the run left open. None when the
    guard failed: the run had already moved on (a race lost)."""
    allowed = allowed_from(target, only_from)
    if left is None:
        left = await left_open(records, tx, run_id)
    columns: dict[str, Any] = {"expires_at": None, "required_action": None, "usage": left.usage}
    if target in STAMPS:
        columns[STAMPS[target]] = now()
    if last_error is not None:
        columns["last_error"] = last_error
    if incomplete_details is not None:
        columns["incomplete_details"] = incomplete_details
    if release:
        columns["worker_id"] = None
    run = await records.transition(tx, run_id, target, allowed, holder=holder, columns=columns)
    if run is None:
        return None
    settled = Settled(run)
    if target is S.COMPLETED:
        return settled
    for step in left.steps:
        settled.steps.append(_close_step(step, target, last_error))
        await records.save_step(tx, settled.steps[-1])
    for message in left.messages:
        settled.messages.append(_close_message(message, target))
        await records.save_message(tx, settled.messages[-1])
    return settled


# ---------------------------------------------------------------- endings, within a transaction


async def complete(tx: Tx, records: RunStore, run_id: str, *, usage: Usage) -> Settled | None:
    """in_progress → completed: the model answered and wants nothing more."""
    return await _settle(tx, records, run_id, S.COMPLETED, Left(usage))


async def end_incomplete(tx: Tx, records: RunStore, run_id: str, *, reason: str, left: Left) -> Settled | None:
    """in_progress → incomplete: a token budget ran out (`reason`)."""
    return await _settle(tx, records, run_id, S.INCOMPLETE, left, incomplete_details={"reason": reason})


async def fail(tx: Tx, records: RunStore, run_id: str, *, error: LastError, left: Left | None,
               holder: str | None = None, release: bool = False) -> Settled | None:
    """→ failed, with why: from in_progress (an upstream error, a crash, a lost worker)."""
    return await _settle(tx, records, run_id, S.FAILED, left, only_from=(S.IN_PROGRESS,), holder=holder,
                         release=release, last_error=error)


async def expire(tx: Tx, records: RunStore, run_id: str, *, status: RunStatus, left: Left | None) -> Settled | None:
    """→ expired: the run reached its `expires_at` in `status`."""
    return await _settle(tx, records, run_id, S.EXPIRED, left, only_from=(status,))


async def finish_cancel(tx: Tx, records: RunStore, run_id: str, *, left: Left | None,
                        holder: str | None = None, release: bool = False) -> Settled | None:
    """cancelling → cancelled: the turn stopped (or its worker is gone)."""
    return await _settle(tx, records, run_id, S.CANCELLED, left, only_from=(S.CANCELLING,), holder=holder,
                         release=release)


async def require_action(tx: Tx, records: RunStore, run_id: str, *, action: RequiredAction) -> Run | None:
    """in_progress → requires_action: the client must answer the model's function calls."""
    return await records.transition(tx, run_id, S.REQUIRES_ACTION, allowed_from(S.REQUIRES_ACTION),
                                    columns={"required_action": action})


# ---------------------------------------------------------------- changes in their own transaction


async def settle_alone(lc: Lifecycle, run_id: str, target: RunStatus, *, status: RunStatus,
                       holder: str | None = None, error: LastError | None = None) -> Settled | None:
    """Settle a run nobody executes (the sweeper's cases) in its own transaction, and publish."""
    async with lc.records.transaction() as tx:
        if target is S.EXPIRED:
            settled = await expire(tx, lc.records, run_id, status=status, left=None)
        elif target is S.CANCELLED:
            settled = await finish_cancel(tx, lc.records, run_id, left=None, holder=holder, release=True)
        else:
            assert error is not None, "a failed run says why"
            settled = await fail(tx, lc.records, run_id, error=error, left=None, holder=holder, release=True)
    if settled is not None:
        settled.publish(lc.broker)
    return settled


async def create(tx: Tx, records: RunStore, row: RunRow, additional: Sequence[Mapping[str, Any]]) -> Run:
    """→ queued: a new run, holding its thread (one active run per thread)."""
    return await records.insert_run(tx, row, additional)


async def start(lc: Lifecycle, worker_id: str, limit: int) -> list[Run]:
    """queued → in_progress, for up to `limit` runs this worker takes."""
    runs = await lc.records.claim(worker_id, limit)
    for run in runs:
        lc.broker.publish(run["id"], "thread.run.in_progress", run)
    return runs


async def hand_back(lc: Lifecycle, run_id: str, holder: str | None = None) -> bool:
    """in_progress → queued: a turn that wrote nothing yet is given to any worker (with
    `holder`: only if that worker still holds it)."""
    async with lc.records.transaction() as tx:
        run = await lc.records.transition(tx, run_id, S.QUEUED, allowed_from(S.QUEUED, (S.IN_PROGRESS,)),
                                          holder=holder, columns={"worker_id": None, "heartbeat_at": None})
    if run is None:
        return False
    lc.broker.publish(run_id, "thread.run.queued", run)
    await lc.broker.flush()
    await lc.signals.run_queued()
    return True


async def cancel(lc: Lifecycle, thread_id: str, run_id: str) -> Run:
    """The API's cancel: `cancelling` while a turn runs (its worker is told at once, and
    ends it `cancelled`), else `cancelled` at once. The database decides every race.

    A run generating, the case a cancel is for, takes one statement committed by itself: no
    transaction waits on a busy event loop between its statements (PostgreSQL)."""
    cancelling = await lc.records.transition_alone(thread_id, run_id, S.CANCELLING,
                                                   allowed_from(S.CANCELLING, (S.IN_PROGRESS,)))
    if cancelling is not None:
        return await _cancelling(lc, cancelling)
    for _ in range(GUARD_RETRIES):
        async with lc.records.transaction() as tx:
            status = RunStatus((await lc.records.get_run(thread_id, run_id, tx))["status"])
            if status not in CANCELLABLE:
                raise invalid(f"Cannot cancel run with status '{status.value}'.")
            if cancel_target(status) is S.CANCELLING:
                cancelling = await lc.records.transition(tx, run_id, S.CANCELLING,
                                                         allowed_from(S.CANCELLING, (status,)))
                settled = None
            else:
                cancelling = None
                settled = await _settle(tx, lc.records, run_id, S.CANCELLED, None, only_from=(status,))
        if settled is not None:
            settled.publish(lc.broker)
            return settled.run
        if cancelling is not None:
            return await _cancelling(lc, cancelling)
    raise invalid("The run changed status while being cancelled; try again.")


async def _cancelling(lc: Lifecycle, run: Run) -> Run:
    lc.broker.publish(run["id"], "thread.run.cancelling", run)
    await lc.broker.flush()  # so `cancelling` precedes what the worker publishes next
    await lc.signals.run_cancelling(run["id"])
    return run


def _check_outputs(run: Run, outputs: list[dict[str, Any]]) -> dict[str, str]:
    status = run["status"]
    if status != S.REQUIRES_ACTION or run["required_action"] is None:
        raise invalid(f'Runs in status "{status}" do not accept tool outputs.')
    pending = [c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]]
    given = {out["tool_call_id"]: out.get("output", "") for out in outputs}
    if set(given) != set(pending) or len(given) != len(outputs):
        raise invalid(
            f"Expected tool outputs for call_ids {sorted(pending)}, got {[o['tool_call_id'] for o in outputs]}",
            "tool_outputs",
        )
    return given


def _record_outputs(step: Step, given: dict[str, str]) -> bool:
    calls = step["step_details"]["tool_calls"]
    if step["status"] != "in_progress" or not any(c["id"] in given for c in calls):
        return False
    for call in calls:
        if call["id"] in given:
            call["function"]["output"] = given[call["id"]]
    step["status"], step["completed_at"] = "completed", now()
    return True


async def submit_tool_outputs(lc: Lifecycle, thread_id: str, run_id: str,
                              outputs: list[dict[str, Any]]) -> tuple[Run, list[Step]]:
    """requires_action → queued: the outputs are recorded on the run's tool step and the
    run waits for a worker to continue it. Returns the run and the steps completed."""
    records = lc.records
    async with records.transaction() as tx:
        given = _check_outputs(await records.get_run(thread_id, run_id, tx), outputs)
        queued = await records.transition(tx, run_id, S.QUEUED, allowed_from(S.QUEUED, (S.REQUIRES_ACTION,)),
                                          columns={"required_action": None})
        if queued is None:
            current = await records.get_run(thread_id, run_id, tx)
            raise invalid(f'Runs in status "{current["status"]}" do not accept tool outputs.')
        steps = [s for s in await records.run_steps(run_id, tx) if s["type"] == "tool_calls"]
        completed = [s for s in steps if _record_outputs(s, given)]
        for step in completed:
            await records.save_step(tx, step)
    await lc.signals.run_queued()
    return queued, completed


def queued_events(run: Run, completed_steps: list[Step] | None = None) -> list[Event]:
    """What a stream of a newly queued run starts with.

    They are handed to the stream rather than published: published after the commit,
    they could arrive behind a fast worker's `thread.run.in_progress`.
    """
    steps = [Event("thread.run.step.completed", step) for step in completed_steps or []]
    return [*steps, Event("thread.run.queued", run)]

