"""The run state machine as data."""

from __future__ import annotations

from assistd.lifecycle.states import (
    ACTIVE,
    CANCELLABLE,
    STREAM_STOPS,
    TERMINAL,
    TRANSITIONS,
    RunStatus,
    can_transition,
    cancel_target,
    sources,
)

S = RunStatus


def test_terminal_statuses_have_no_way_out() -> None:
    assert {S.CANCELLED, S.FAILED, S.COMPLETED, S.INCOMPLETE, S.EXPIRED} == TERMINAL
    for status in TERMINAL:
        assert not TRANSITIONS[status]


def test_active_statuses_are_the_ones_that_lock_a_thread() -> None:
    assert {S.QUEUED, S.IN_PROGRESS, S.REQUIRES_ACTION, S.CANCELLING} == ACTIVE


def test_only_an_in_progress_run_can_complete_or_go_incomplete() -> None:
    assert sources(S.COMPLETED) == ("in_progress",)
    assert sources(S.INCOMPLETE) == ("in_progress",)


def test_a_cancelling_run_can_only_become_cancelled() -> None:
    assert TRANSITIONS[S.CANCELLING] == {S.CANCELLED}
    assert not can_transition(S.CANCELLING, S.COMPLETED)
    assert not can_transition(S.CANCELLING, S.FAILED)


def test_cancel_goes_through_cancelling_only_while_a_turn_runs() -> None:
    assert {S.QUEUED, S.IN_PROGRESS, S.REQUIRES_ACTION} == CANCELLABLE
    assert cancel_target(S.IN_PROGRESS) is S.CANCELLING
    assert cancel_target(S.QUEUED) is S.CANCELLED
    assert cancel_target(S.REQUIRES_ACTION) is S.CANCELLED
    assert set(sources(S.CANCELLED)) == {"cancelling", "queued", "requires_action"}


def test_tool_outputs_requeue_a_waiting_run() -> None:
    assert can_transition(S.REQUIRES_ACTION, S.QUEUED)
    assert sources(S.REQUIRES_ACTION) == ("in_progress",)


def test_streams_stop_where_the_client_must_act_or_the_run_ended() -> None:
    assert TERMINAL | {S.REQUIRES_ACTION} == STREAM_STOPS


def test_a_worker_can_hand_back_a_running_run_but_not_a_cancelling_one() -> None:
    assert set(sources(S.QUEUED)) == {"in_progress", "requires_action"}
    assert not can_transition(S.CANCELLING, S.QUEUED)
