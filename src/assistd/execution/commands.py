"""What the API asks of runs: create, cancel, submit tool outputs.

Each is one transaction with a guarded status change, then the wake-ups and stream
events that follow from it. The database decides every race.
"""

from __future__ import annotations

from typing import Any

from assistd.domain import objects as o
from assistd.domain.errors import invalid
from assistd.domain.ids import now
from assistd.domain.run_state import CANCELLABLE, RunStatus, cancel_target
from assistd.execution.broker import Event
from assistd.execution.runtime import Runtime
from assistd.execution.settle import Settled, settle_in
from assistd.observability import tracing

Obj = dict[str, Any]
GUARD_RETRIES = 5


def message_from_params(thread_id: str, params: Obj) -> Obj:
    return o.new_message(
        thread_id,
        params["role"],
        o.content_parts(params["content"]),
        attachments=params.get("attachments"),
        metadata=params.get("metadata"),
    )


def new_run(rt: Runtime, thread_id: str, assistant: Obj, params: Obj) -> tuple[Obj, list[Obj]]:
    row = o.new_run_row(thread_id, assistant, params, rt.settings.run_expires_seconds)
    row["traceparent"] = tracing.current_traceparent()  # the run's spans join this request's trace
    extra = [message_from_params(thread_id, m) for m in params.get("additional_messages") or []]
    return row, extra


def queued_events(run: Obj, completed_steps: list[Obj] | None = None) -> list[Event]:
    """What a stream of a newly queued run starts with.

    They are handed to the stream rather than published: published after the commit,
    they could arrive behind a fast worker's `thread.run.in_progress`.
    """
    steps = [Event("thread.run.step.completed", step) for step in completed_steps or []]
    return [*steps, Event("thread.run.queued", run)]


# ---------------------------------------------------------------- cancel


async def cancel_run(rt: Runtime, thread_id: str, run_id: str) -> Obj:
    """Cancel: `cancelling` while a turn runs (the worker is told at once), else `cancelled`."""
    for _ in range(GUARD_RETRIES):
        async with rt.store.db.transaction() as tx:
            run = await rt.store.get_run(thread_id, run_id, tx)
            status = RunStatus(run["status"])
            if status not in CANCELLABLE:
                raise invalid(f"Cannot cancel run with status '{status.value}'.")
            if cancel_target(status) is RunStatus.CANCELLING:
                result: Obj | Settled | None = await rt.store.transition(
                    run_id, RunStatus.CANCELLING, tx, only_from=(status.value,)
                )
            else:
                result = await settle_in(tx, rt.store, run_id, RunStatus.CANCELLED, only_from=(status.value,))
        if isinstance(result, Settled):
            result.publish(rt.broker)
            return result.run
        if result is not None:
            rt.broker.publish(run_id, "thread.run.cancelling", result)
            await rt.broker.flush()  # so `cancelling` precedes what the worker publishes next
            await rt.signals.run_cancelling(run_id)
            return result
    raise invalid("The run changed status while being cancelled; try again.")


# ---------------------------------------------------------------- tool outputs


def _check_outputs(run: Obj, outputs: list[Obj]) -> dict[str, str]:
    status = run["status"]
    if status != RunStatus.REQUIRES_ACTION:
        raise invalid(f'Runs in status "{status}" do not accept tool outputs.')
    pending = [c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]]
    given = {out["tool_call_id"]: out.get("output", "") for out in outputs}
    if set(given) != set(pending) or len(given) != len(outputs):
        raise invalid(
            f"Expected tool outputs for call_ids {sorted(pending)}, got {[o_['tool_call_id'] for o_ in outputs]}",
            "tool_outputs",
        )
    return given


def _record_outputs(step: Obj, given: dict[str, str]) -> bool:
    calls = step["step_details"]["tool_calls"]
    if step["status"] != "in_progress" or not any(c["id"] in given for c in calls):
        return False
    for call in calls:
        if call["id"] in given:
            call["function"]["output"] = given[call["id"]]
    step.update(status="completed", completed_at=now())
    return True


async def submit_tool_outputs(rt: Runtime, thread_id: str, run_id: str, outputs: list[Obj]) -> tuple[Obj, list[Obj]]:
    """Record the outputs on the run's tool step and queue the run to continue."""
    async with rt.store.db.transaction() as tx:
        run = await rt.store.get_run(thread_id, run_id, tx)
        given = _check_outputs(run, outputs)
        queued = await rt.store.transition(
            run_id, RunStatus.QUEUED, tx, only_from=("requires_action",), required_action=None
        )
        if queued is None:
            current = await rt.store.get_run(thread_id, run_id, tx)
            raise invalid(f'Runs in status "{current["status"]}" do not accept tool outputs.')
        steps = [s for s in await rt.store.run_steps(run_id, tx) if s["type"] == "tool_calls"]
        completed = [s for s in steps if _record_outputs(s, given)]
        for step in completed:
            await rt.store.save_step(step, tx)
    return queued, completed
