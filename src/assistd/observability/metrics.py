"""Prometheus metrics (prometheus_client's default registry, so process and GC metrics come too).

Counters and histograms are this process's own; gauges read from the database
(`assistd_queued_runs`, `assistd_in_progress_runs`, `assistd_ingestion_files`) are set at
scrape time and are the same in every process of a deployment.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from assistd.execution import loop_lag
from assistd.storage import write_wait

# Runs take seconds to minutes; the first token, well under a second to tens of seconds.
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RUNS = Counter("assistd_runs", "Runs that reached a final status", ["status"])
RUN_SECONDS = Histogram("assistd_run_duration_seconds",
                        "Seconds from a run's creation to its final status", buckets=RUN_BUCKETS)
FIRST_TOKEN_SECONDS = Histogram("assistd_run_time_to_first_token_seconds",
                                "Seconds from a turn's start to its first streamed delta",
                                buckets=FAST_BUCKETS)
UPSTREAM = Counter("assistd_upstream_requests", "Upstream Chat Completions requests by outcome",
                   ["outcome"])
UPSTREAM_SECONDS = Histogram("assistd_upstream_request_duration_seconds",
                             "Seconds until the upstream answered a request (its stream opened)",
                             buckets=FAST_BUCKETS)
UPSTREAM_TOKENS = Counter("assistd_upstream_tokens", "Tokens the upstream reported", ["kind"])
ACTIVE_STREAMS = Gauge("assistd_active_streams", "Server-Sent Events responses open in this process")
EXECUTING = Gauge("assistd_executing_runs", "Run turns this process executes now")
QUEUED = Gauge("assistd_queued_runs", "Runs waiting for a worker (deployment-wide)")
IN_PROGRESS = Gauge("assistd_in_progress_runs", "Runs in progress (deployment-wide)")
LIVE_RUNS = Gauge("assistd_live_runs", "Runs not yet final, by status (deployment-wide)", ["status"])
INGESTION = Gauge("assistd_ingestion_files", "Vector store files by ingestion status (deployment-wide)",
                  ["status"])
DATABASE_UP = Gauge("assistd_database_up", "1 when the last scrape could read the database, else 0")
CODE_SESSIONS = Gauge("assistd_code_sessions", "Live code_interpreter sessions in this process")
TOOL_CALLS = Counter("assistd_tool_calls", "Tool calls answered by assistd", ["tool", "outcome"])
HTTP = Counter("assistd_http_requests", "HTTP requests by route template and status",
               ["method", "route", "status"])
HTTP_SECONDS = Histogram("assistd_http_request_duration_seconds", "HTTP request duration, to the last byte",
                         ["route"], buckets=FAST_BUCKETS)

LIVE_STATUSES = ("queued", "in_progress", "requires_action", "cancelling")
INGESTION_STATUSES = ("in_progress", "completed", "failed", "cancelled")


def set_database_gauges(runs: dict[str, int], files: dict[str, int]) -> None:
    """Set the gauges that come from the database (every status shown, zero included)."""
    QUEUED.set(runs.get("queued", 0))
    IN_PROGRESS.set(runs.get("in_progress", 0))
    for status in LIVE_STATUSES:
        LIVE_RUNS.labels(status).set(runs.get(status, 0))
    for status in {*INGESTION_STATUSES, *files}:
        INGESTION.labels(status).set(files.get(status, 0))


class StallCollector(Collector):
    """This process's event-loop lag and database connection waits (execution/loop_lag,
    storage/write_wait), read when scraped: what makes a cancel slow shows here first."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        lag, waits = loop_lag.figures(), write_wait.figures()
        yield GaugeMetricFamily("assistd_event_loop_lag_max_seconds",
                                "Worst event-loop lag since the process started", value=lag["max_seconds"])
        yield GaugeMetricFamily("assistd_event_loop_lag_recent_max_seconds",
                                "Worst event-loop lag in the last minute", value=lag["recent_max_seconds"])
        yield CounterMetricFamily("assistd_event_loop_stalls", "Event-loop lags of 100 ms or more",
                                  value=lag["stalls_total"])
        yield GaugeMetricFamily("assistd_db_wait_max_seconds",
                                "Longest wait for the database's writer or a pooled connection",
                                value=waits["max_wait_seconds"])
        yield CounterMetricFamily("assistd_db_waits", "Waits for the database's writer or a pooled connection",
                                  value=waits["waits_total"])
        yield CounterMetricFamily("assistd_db_wait_seconds", "Time spent waiting for the database",
                                  value=waits["wait_seconds_total"])
        yield CounterMetricFamily("assistd_db_slow_waits", "Database waits of 100 ms or more",
                                  value=waits["slow_waits_total"])


REGISTRY.register(StallCollector())


def exposition() -> tuple[bytes, str]:
    """The text format body and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
