"""OpenTelemetry traces: optional (`pip install assistd[otel]`), off unless OTEL_* configures it.

On when OTEL_TRACES_EXPORTER is `otlp` or `console`, or an OTLP endpoint is set
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); OTEL_SDK_DISABLED=true
turns it off. The exporter reads its own OTEL_* variables (endpoint, headers, protocol).

A run's spans join the trace of the request that created it, in whichever process executes
the run: the request's W3C `traceparent` is stored with the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

log = logging.getLogger("assistd")
_tracer: Any = None  # an opentelemetry Tracer once configured
_provider: Any = None


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(exporter: Any = None) -> bool:
    """Start tracing if configured (or with `exporter`, for tests); False when it stays off."""
    global _tracer, _provider
    if exporter is None and not wanted():
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces, but OpenTelemetry is not installed: pip install 'assistd[otel]'")
        return False
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    name = os.environ.get("OTEL_SERVICE_NAME") or "assistd"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter()))
    _provider, _tracer = provider, provider.get_tracer("assistd")
    log.info("tracing on: spans go to %s", type(exporter).__name__ if exporter else
             os.environ.get("OTEL_TRACES_EXPORTER", "otlp"))
    return True


def _exporter() -> Any:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is still buffered."""
    if _provider is not None:
        _provider.force_flush()


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, parent: Any = None,
         kind: str = "internal") -> Iterator[Any]:
    """A span around the block (the current span's child, or `parent`'s); None when tracing is off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    kinds = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}
    with _tracer.start_as_current_span(name, context=parent, kind=kinds[kind],
                                       attributes=dict(attributes or {}),
                                       record_exception=True, set_status_on_exception=True) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def start_span(name: str, attributes: Mapping[str, Any], *, parent: Any = None) -> Any:
    """Start a span and make it current for the rest of this task; end it with end_span."""
    from opentelemetry import context, trace

    current = _tracer.start_span(name, context=parent, attributes=dict(attributes))
    return current, context.attach(trace.set_span_in_context(current))


def end_span(started: Any) -> None:
    from opentelemetry import context

    current, token = started
    current.end()
    with suppress(Exception):  # a detach from another context; the span is ended all the same
        context.detach(token)


def set_attributes(current: Any, **attributes: Any) -> None:
    if current is not None:
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def from_headers(headers: Mapping[str, str]) -> Any:
    """The trace context a request carries (`traceparent`), or None."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier=dict(headers))


def current_traceparent() -> str | None:
    """The current span as a W3C traceparent, to store with a run; None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def from_traceparent(traceparent: str | None) -> Any:
    """The context a stored traceparent names, to parent a run's spans on."""
    if _tracer is None or not traceparent:
        return None
    return from_headers({"traceparent": traceparent})
