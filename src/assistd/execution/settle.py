"""Ending a run: one transaction that moves the run to its final status and closes its
open message and step, then the stream events that tell watchers about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from assistd.domain.ids import now
from assistd.domain.run_state import RunStatus
from assistd.execution.broker import Broker
from assistd.observability import runs as observed
from assistd.storage.db import Executor
from assistd.storage.store import Store

Obj = dict[str, Any]

# How the open step and message of a run end, for each way the run ends.
STEP_STATUS = {
    RunStatus.CANCELLED: ("cancelled", "cancelled_at"),
    RunStatus.FAILED: ("failed", "failed_at"),
    RunStatus.EXPIRED: ("expired", "expired_at"),
    RunStatus.INCOMPLETE: ("cancelled", "cancelled_at"),
}
MESSAGE_REASON = {
    RunStatus.CANCELLED: "run_cancelled",
    RunStatus.FAILED: "run_failed",
    RunStatus.EXPIRED: "run_expired",
    RunStatus.INCOMPLETE: "max_tokens",
}


@dataclass
class Settled:
    run: Obj
    messages: list[Obj] = field(default_factory=list)
    steps: list[Obj] = field(default_factory=list)

    def publish(self, broker: Broker) -> None:
        run_id = self.run["id"]
        for message in self.messages:
            broker.publish(run_id, "thread.message.incomplete", message)
        for step in self.steps:
            broker.publish(run_id, f"thread.run.step.{step['status']}", step)
        broker.publish(run_id, f"thread.run.{self.run['status']}", self.run)
        observed.settled(self.run)


def _close_step(step: Obj, target: RunStatus, last_error: Obj | None) -> Obj:
    status, stamp = STEP_STATUS[target]
    step["status"] = status
    step[stamp] = now()
    if target is RunStatus.FAILED:
        step["last_error"] = last_error
    return step


def _close_message(message: Obj, target: RunStatus) -> Obj:
    message["status"] = "incomplete"
    message["incomplete_at"] = now()
    message["incomplete_details"] = {"reason": MESSAGE_REASON[target]}
    return message


async def settle_in(
    tx: Executor,
    store: Store,
    run_id: str,
    target: RunStatus,
    *,
    only_from: tuple[str, ...] | None = None,
    holder: str | None = None,
    **fields: Any,
) -> Settled | None:
    """Within a transaction: the guarded move to `target`, closing what the run left open.

    Returns None when the guard failed: the run had already moved on (a race lost).
    """
    stamp = {
        RunStatus.CANCELLED: "cancelled_at",
        RunStatus.FAILED: "failed_at",
        RunStatus.COMPLETED: "completed_at",
    }.get(target)
    if stamp and stamp not in fields:
        fields[stamp] = now()
    steps = await store.run_steps(run_id, tx)
    if "usage" not in fields:
        fields["usage"] = run_usage(steps)
    run = await store.transition(run_id, target, tx, only_from=only_from, holder=holder,
                                 expires_at=None, required_action=None, **fields)
    if run is None:
        return None
    settled = Settled(run)
    if target is RunStatus.COMPLETED:
        return settled
    for step in steps:
        if step["status"] == "in_progress":
            settled.steps.append(_close_step(step, target, fields.get("last_error")))
            await store.save_step(step, tx)
    for message in await store.run_messages(run_id, tx):
        if message["status"] == "in_progress":
            settled.messages.append(_close_message(message, target))
            await store.save_message(message, tx)
    return settled


async def settle(store: Store, broker: Broker, run_id: str, target: RunStatus, **fields: Any) -> Settled | None:
    """Settle a run in its own transaction and tell its watchers."""
    async with store.db.transaction() as tx:
        settled = await settle_in(tx, store, run_id, target, **fields)
    if settled is not None:
        settled.publish(broker)
    return settled


def run_usage(steps: list[Obj]) -> Obj:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for step in steps:
        for key in total:
            total[key] += int((step.get("usage") or {}).get(key) or 0)
    return total
