"""Tracing, in process, with OpenTelemetry's in-memory exporter: spans nest, and a stored
traceparent parents a later span (as a run's turn joins the request that created it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from assistd.observability import runs, tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(exporter)
    try:
        yield exporter
    finally:
        tracing._tracer = tracing._provider = None


def test_tracing_stays_off_without_otel_variables() -> None:
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.current_traceparent() is None  # off: nothing is stored with a run


def test_a_stored_traceparent_parents_the_run_turn_and_its_upstream_call(spans: InMemorySpanExporter) -> None:
    with tracing.span("POST /v1/threads/{thread_id}/runs", kind="server") as request:
        stored = tracing.current_traceparent()
    assert stored is not None and stored.startswith("00-")

    async def turn_elsewhere() -> None:  # another task, as a worker's turn is
        started = tracing.start_span("run turn", {"assistd.run_id": "run_1"},
                                     parent=tracing.from_traceparent(stored))
        with runs.upstream_call({"model": "m"}) as call:
            call.usage({"prompt_tokens": 7, "completion_tokens": 3})
        with runs.tool_call("file_search", run_id="run_1"):
            pass
        tracing.end_span(started)

    asyncio.run(turn_elsewhere())
    by_name = {s.name: s for s in spans.get_finished_spans()}
    trace_id = request.get_span_context().trace_id
    turn, chat, search = by_name["run turn"], by_name["chat m"], by_name["file_search"]
    assert {turn.context.trace_id, chat.context.trace_id, search.context.trace_id} == {trace_id}
    assert turn.parent is not None and turn.parent.span_id == request.get_span_context().span_id
    assert chat.parent is not None and chat.parent.span_id == turn.context.span_id
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.usage.input_tokens"] == 7
    assert chat.attributes["gen_ai.usage.output_tokens"] == 3


def test_a_failing_upstream_call_marks_its_span_as_an_error(spans: InMemorySpanExporter) -> None:
    class Failure(Exception):
        code = "server_error"

    with pytest.raises(Failure), runs.upstream_call({"model": "m"}):
        raise Failure("boom")
    (chat,) = spans.get_finished_spans()
    assert not chat.status.is_ok and "boom" in (chat.status.description or "")
