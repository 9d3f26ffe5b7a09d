"""What a stream missed, from the database: the rest of the text, then completions, the run last."""

from __future__ import annotations

from assistd.execution.broker import Event, serialize
from assistd.execution.fallback import Delivered
from assistd.lifecycle.records import Message, Step
from tests.support import records

RUN = {"id": "run_1", "status": "in_progress"}


def _message(text: str, status: str = "in_progress") -> Message:
    return records.message([{"type": "text", "text": {"value": text, "annotations": []}}], status=status)


def _step(status: str = "in_progress") -> Step:
    return records.step({"type": "message_creation", "message_creation": {"message_id": "msg_1"}}, status=status)


def _delta(piece: str) -> Event:
    return Event("thread.message.delta", serialize({"id": "msg_1", "delta": {"content": [
        {"index": 0, "type": "text", "text": {"value": piece, "annotations": []}}]}}))


def _sent_until_second_delta() -> Delivered:
    delivered = Delivered()
    for event in [Event("thread.run.created", RUN), Event("thread.run.queued", RUN),
                  Event("thread.run.in_progress", serialize(RUN)),
                  Event("thread.run.step.created", serialize(_step())),
                  Event("thread.message.created", serialize(_message(""))), _delta("Hello "), _delta("wor")]:
        delivered.note(event)
    return delivered


def test_a_finished_run_sends_the_rest_of_the_text_then_the_message_then_the_run() -> None:
    delivered = _sent_until_second_delta()
    missed = delivered.missed({**RUN, "status": "completed"}, [_message("Hello world!", "completed")],
                              [_step("completed")])
    assert [e.event for e in missed] == ["thread.message.delta", "thread.message.completed",
                                         "thread.run.step.completed", "thread.run.completed"]
    assert missed[0].data["delta"]["content"][0]["text"]["value"] == "ld!"


def test_nothing_is_sent_twice() -> None:
    delivered = _sent_until_second_delta()
    state = ({**RUN, "status": "completed"}, [_message("Hello world!", "completed")], [_step("completed")])
    assert delivered.missed(*state)
    assert delivered.missed(*state) == []


def test_a_running_message_sends_only_the_text_the_database_holds_beyond_what_was_sent() -> None:
    delivered = _sent_until_second_delta()
    assert delivered.missed(RUN, [_message("Hello")], [_step()]) == []  # the flush lags the deltas
    missed = delivered.missed(RUN, [_message("Hello world")], [_step()])
    assert [e.event for e in missed] == ["thread.message.delta"]


def test_a_message_never_announced_is_created_empty_then_filled() -> None:
    delivered = Delivered()
    delivered.note(Event("thread.run.in_progress", RUN))
    missed = delivered.missed({**RUN, "status": "completed"}, [_message("All of it", "completed")],
                              [_step("completed")])
    assert [e.event for e in missed] == [
        "thread.run.step.created", "thread.run.step.in_progress", "thread.message.created",
        "thread.message.in_progress", "thread.message.delta", "thread.message.completed",
        "thread.run.step.completed", "thread.run.completed"]
    assert missed[2].data["content"] == [] and missed[2].data["status"] == "in_progress"


def test_a_stream_joining_a_run_with_a_past_counts_that_past_as_sent() -> None:
    run = {**RUN, "status": "requires_action"}
    delivered = Delivered.as_now(run, [_message("Earlier", "completed")], [_step("completed")])
    delivered.note(Event("thread.run.queued", run))
    assert delivered.missed({**RUN, "status": "completed"}, [_message("Earlier", "completed")],
                            [_step("completed")]) == [Event("thread.run.completed", {**RUN, "status": "completed"})]
