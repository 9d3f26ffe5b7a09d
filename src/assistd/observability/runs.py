"""What a run shows an operator: a line when a turn starts and when the run ends, a WARNING
when it ends badly, its metrics, and spans for its turns, upstream calls and tool calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from assistd.lifecycle.records import RunView
from assistd.observability import metrics, tracing
from assistd.storage.store import Store

log = logging.getLogger("assistd.runs")
Obj = dict[str, Any]
BAD_ENDS = frozenset({"failed", "expired", "incomplete"})
_upstream_host = ""


def configure(upstream_base_url: str) -> None:
    """Remember which upstream this process uses, for the lines that name it."""
    global _upstream_host  # noqa: PLW0603 - set once at start-up, read by every line that names it
    _upstream_host = urlsplit(upstream_base_url).netloc or upstream_base_url


@dataclass
class Turn:
    run: RunView
    started: float = field(default_factory=time.perf_counter)
    first_delta_seen: bool = False
    span: Any = None

    def first_delta(self) -> None:
        """Called on every delta; counts only the turn's first."""
        if not self.first_delta_seen:
            self.first_delta_seen = True
            metrics.FIRST_TOKEN_SECONDS.observe(time.perf_counter() - self.started)


async def start_turn(store: Store, run: RunView) -> Turn:
    """A turn of `run` begins: logged, and (with tracing) a span in the trace of the request
    that created the run, current for the rest of the turn's task."""
    log.info("run %s started (thread %s, model %s)", run["id"], run["thread_id"], run.get("model"),
             extra={"run_id": run["id"], "thread_id": run["thread_id"]})
    watch = Turn(run)
    if tracing.enabled():
        parent = tracing.from_traceparent(await store.runs.run_traceparent(run["id"]))
        watch.span = tracing.start_span("run turn", {
            "assistd.run_id": run["id"], "assistd.thread_id": run["thread_id"],
            "gen_ai.request.model": run.get("model") or ""}, parent=parent)
    return watch


def end_turn(watch: Turn | None) -> None:
    if watch is not None and watch.span is not None:
        tracing.end_span(watch.span)


def settled(run: RunView) -> None:
    """A run reached its final status: count it, log it, and warn when it ended badly."""
    status = str(run["status"])
    seconds = max(0.0, time.time() - float(run.get("created_at") or time.time()))
    metrics.RUNS.labels(status).inc()
    metrics.RUN_SECONDS.observe(seconds)
    usage = run.get("usage") or {}
    fields = {"run_id": run["id"], "thread_id": run["thread_id"], "status": status,
              "duration_s": round(seconds, 3), "total_tokens": usage.get("total_tokens")}
    log.info("run %s ended %s after %.1fs, %s tokens (prompt %s, completion %s)", run["id"], status, seconds,
             usage.get("total_tokens"), usage.get("prompt_tokens"), usage.get("completion_tokens"), extra=fields)
    if status in BAD_ENDS:
        why = run.get("last_error") or run.get("incomplete_details")
        log.warning("run %s of thread %s ended %s: %s (upstream %s)", run["id"], run["thread_id"], status, why,
                    _upstream_host, extra={**fields, "last_error": why, "upstream": _upstream_host})


class UpstreamCall:
    def __init__(self, span: Any) -> None:
        self.span = span
        self.started = time.perf_counter()

    def opened(self) -> None:
        """The upstream answered (its stream is open): that is the request's latency."""
        metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - self.started)

    def usage(self, usage: Obj | None) -> None:
        if not usage:
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            metrics.UPSTREAM_TOKENS.labels(kind.removesuffix("_tokens")).inc(int(usage.get(kind) or 0))
        tracing.set_attributes(self.span, **{"gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
                                             "gen_ai.usage.output_tokens": usage.get("completion_tokens")})


@contextmanager
def upstream_call(request: Obj) -> Iterator[UpstreamCall]:
    """One upstream request, counted by outcome (`ok`, the run error code, or `cancelled`)."""
    outcome = "ok"
    with tracing.span("chat " + str(request.get("model", "")), {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": str(request.get("model", "")),
        "server.address": _upstream_host,
    }, kind="client") as span:
        try:
            yield UpstreamCall(span)
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            metrics.UPSTREAM.labels(outcome).inc()


def _outcome(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    return "cancelled" if type(exc).__name__ == "CancelledError" else "error"


@contextmanager
def tool_call(tool: str, **attributes: Any) -> Iterator[None]:
    """A tool call assistd answers itself (file_search, code_interpreter)."""
    outcome = "ok"
    with tracing.span(tool, {f"assistd.{k}": v for k, v in attributes.items()}):
        try:
            yield
        except BaseException:
            outcome = "error"
            raise
        finally:
            metrics.TOOL_CALLS.labels(tool, outcome).inc()
