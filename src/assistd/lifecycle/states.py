"""The run state machine as data: which status may follow which.

Every status change is one guarded write (`UPDATE … WHERE status IN allowed_from(target)`),
so races such as cancel vs. completion are settled by the database. The table is binding:
`allowed_from` refuses a guard that names a status the table doesn't lead from, and the
claim, stale and expiry queries take their statuses from the sets below.
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


# A worker holds the run (its turn executes, under a lease) in these statuses.
HELD: frozenset[RunStatus] = frozenset({S.IN_PROGRESS, S.CANCELLING})


class IllegalTransition(ValueError):
    """A write asked for a status change the table doesn't allow: a bug in assistd."""


def sources(target: RunStatus) -> tuple[str, ...]:
    """Statuses from which `target` may be entered, in a stable order for SQL."""
    return tuple(sorted(s.value for s, nxt in TRANSITIONS.items() if target in nxt))


def can_transition(current: RunStatus, target: RunStatus) -> bool:
    return target in TRANSITIONS[current]


def cancel_target(current: RunStatus) -> RunStatus:
    """Cancel goes through `cancelling` only where something is running to be stopped."""
    return S.CANCELLING if current is S.IN_PROGRESS else S.CANCELLED


def allowed_from(target: RunStatus, only_from: tuple[RunStatus, ...] | None = None) -> tuple[str, ...]:
    """The statuses a guarded write to `target` may leave: all the table allows, or the
    subset `only_from` names (each of which the table must allow)."""
    if only_from is None:
        return sources(target)
    illegal = [s for s in only_from if not can_transition(s, target)]
    if illegal:
        raise IllegalTransition(f"{', '.join(s.value for s in illegal)} → {target.value} is not in the table")
    return tuple(sorted(s.value for s in only_from))


# The queries that find runs to act on, from the table: a worker claims what may start…
CLAIMABLE: tuple[str, ...] = sources(S.IN_PROGRESS)
# …a sweeper looks for held runs whose lease lapsed…
STALE: tuple[str, ...] = tuple(sorted(s.value for s in HELD))
# …and expires, itself, waiting runs no turn holds (a running turn expires itself).
EXPIRABLE: tuple[str, ...] = tuple(sorted(set(sources(S.EXPIRED)) - set(STALE)))
