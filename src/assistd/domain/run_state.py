"""The run state machine as data: which status may follow which.

Every status change is one guarded write (`UPDATE … WHERE status IN sources(target)`),
so races such as cancel vs. completion are settled by the database.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    REQUIRES_ACTION = "requires_action"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    EXPIRED = "expired"


S = RunStatus

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.QUEUED: frozenset({S.IN_PROGRESS, S.CANCELLED, S.FAILED, S.EXPIRED}),
    # in_progress → queued: a worker hands back a run whose turn has written nothing yet
    # (it is stopping, or it died), for another worker to run from the start of the turn.
    # in_progress → expired: a turn still running at `expires_at` is stopped.
    S.IN_PROGRESS: frozenset(
        {S.QUEUED, S.REQUIRES_ACTION, S.CANCELLING, S.COMPLETED, S.INCOMPLETE, S.FAILED, S.EXPIRED}
    ),
    S.REQUIRES_ACTION: frozenset({S.QUEUED, S.CANCELLED, S.FAILED, S.EXPIRED}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    S.CANCELLED: frozenset(),
    S.FAILED: frozenset(),
    S.COMPLETED: frozenset(),
    S.INCOMPLETE: frozenset(),
    S.EXPIRED: frozenset(),
}

TERMINAL: frozenset[RunStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
ACTIVE: frozenset[RunStatus] = frozenset(TRANSITIONS) - TERMINAL
CANCELLABLE: frozenset[RunStatus] = frozenset({S.QUEUED, S.IN_PROGRESS, S.REQUIRES_ACTION})
# A stream of a run ends when the run reaches one of these: the client has to act next.
STREAM_STOPS: frozenset[RunStatus] = TERMINAL | {S.REQUIRES_ACTION}


def sources(target: RunStatus) -> tuple[str, ...]:
    """Statuses from which `target` may be entered, in a stable order for SQL."""
    return tuple(sorted(s.value for s, nxt in TRANSITIONS.items() if target in nxt))


def can_transition(current: RunStatus, target: RunStatus) -> bool:
    return target in TRANSITIONS[current]


def cancel_target(current: RunStatus) -> RunStatus:
    """Cancel goes through `cancelling` only where something is running to be stopped."""
    return S.CANCELLING if current is S.IN_PROGRESS else S.CANCELLED
