"""What an operator sees: request ids and access lines, run lines, JSON logs, /metrics,
/readyz, one-line start-up errors, `assistd check`, and the command line's help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BACKENDS
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, poll, wait_until
from tests.support.server import POSTGRES_ADMIN_URL, AssistdServer, free_port

REDIS_URL = os.environ.get("ASSISTD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTD_", "OPENAI_", "OTEL_"))}
    return {**base, "ASSISTD_DATA_DIR": str(tmp_path), **settings}


def _assistd(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assistd", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _samples(server: AssistdServer, root: str | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{root or server.root_url}/metrics", headers=server.headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---------------------------------------------------------------- logs


def test_every_response_carries_a_request_id_that_the_access_line_names(
        client: openai.OpenAI, server: AssistdServer) -> None:
    raw = client.beta.assistants.with_raw_response.list()
    request_id = raw.headers["x-request-id"]
    assert re.fullmatch(r"req_[0-9a-f]{32}", request_id)
    assert raw.parse()._request_id == request_id  # what the SDK shows its users
    missing = httpx.get(f"{server.base_url}/assistants/asst_nope", headers=server.headers)
    assert missing.status_code == 404 and missing.headers["x-request-id"].startswith("req_")
    # The line is written once the response has gone out: wait for it rather than race it.
    wait_until(lambda: missing.headers["x-request-id"] in server.log_text(), what="the access line")
    lines = server.log_text().splitlines()
    assert any(re.search(rf"assistd\.access: GET /v1/assistants 200 [0-9.]+ms {request_id}$", line)
               for line in lines), server.log_tail()
    assert any("GET /v1/assistants/asst_nope 404" in line and missing.headers["x-request-id"] in line
               for line in lines)


def test_a_run_against_an_unreachable_upstream_fails_naming_the_url_and_warns(make_server: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    server = make_server(env={"ASSISTD_UPSTREAM_BASE_URL": dead, "ASSISTD_UPSTREAM_API_KEY": "sk-upstream-secret-1234",
                              "ASSISTD_API_KEYS": "client-secret-key-5678"})
    client = server.client()
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = poll(client, thread.id, assistant_id=assistant(client).id)
    assert run.status == "failed" and run.last_error is not None
    assert f"{dead}/chat/completions" in run.last_error.message
    # The lines follow the run's commit, which the client may see first.
    wait_until(lambda: f"run {run.id} ended failed" in server.log_text(), what="the run's last line")
    log = server.log_text()
    assert f"run {run.id} started (thread {thread.id}" in log
    ended = [line for line in log.splitlines() if f"run {run.id} ended failed" in line]
    assert ended and "tokens" in ended[0]
    warnings = [line for line in log.splitlines() if " WARNING " in line and run.id in line]
    assert len(warnings) == 1, log
    assert thread.id in warnings[0] and "server_error" in warnings[0] and dead.split("/")[2] in warnings[0]
    assert "sk-upstream-secret-1234" not in log and "client-secret-key-5678" not in log


def test_an_incomplete_run_warns_with_its_reason(client: openai.OpenAI, server: AssistdServer,
                                                 upstream: FakeUpstream) -> None:
    upstream.on("cut-short", Reply.text("a long answer", finish_reason="length"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "cut-short"}])
    run = poll(client, thread.id, assistant_id=assistant(client).id)
    assert run.status == "incomplete"
    wait_until(lambda: f"run {run.id} ended incomplete" in server.log_text(), what="the run's last line")
    warnings = [line for line in server.log_text().splitlines() if " WARNING " in line and run.id in line]
    assert len(warnings) == 1 and thread.id in warnings[0] and "max_completion_tokens" in warnings[0]


def test_json_log_format_makes_every_line_one_json_object(make_server: Any, upstream: FakeUpstream) -> None:
    server = make_server(env={"ASSISTD_LOG_FORMAT": "json", "ASSISTD_LOG_LEVEL": "debug"})
    client = server.client()
    upstream.on("json-logs", Reply.text("fine"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "json-logs"}])
    run = poll(client, thread.id, assistant_id=assistant(client).id)
    assert run.status == "completed"
    server.stop()
    lines = [line for line in server.log_text().splitlines() if line and not line.startswith("---- start")]
    objects = [json.loads(line) for line in lines]  # fails on any line that isn't one JSON object
    assert {"time", "level", "logger", "message"} <= set(objects[0])
    loggers = {o["logger"] for o in objects}
    assert {"uvicorn.error", "assistd.access", "assistd.runs"} <= loggers, loggers
    access = next(o for o in objects if o["logger"] == "assistd.access" and "/runs" in o["path"])
    assert access["request_id"].startswith("req_") and access["status"] == 200
    ended = next(o for o in objects if o["logger"] == "assistd.runs" and o.get("status") == "completed")
    assert ended["run_id"] == run.id and ended["total_tokens"] == run.usage.total_tokens  # type: ignore[union-attr]


# ---------------------------------------------------------------- metrics


def test_metrics_count_runs_upstream_calls_and_requests_by_route(
        client: openai.OpenAI, server: AssistdServer, upstream: FakeUpstream) -> None:
    before = _samples(server)
    upstream.on("metrics-ok", Reply.text("one two three", chunk_delay=0.01))
    upstream.on("metrics-bad", Reply.error(500))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "metrics-ok"}])
    helper = assistant(client)
    assert poll(client, thread.id, assistant_id=helper.id).status == "completed"
    other = client.beta.threads.create(messages=[{"role": "user", "content": "metrics-bad"}])
    assert poll(client, other.id, assistant_id=helper.id).status == "failed"
    # A run is counted just after its final status is committed, which the client may see first.
    wait_until(lambda: _value(_samples(server), "assistd_runs_total", status="failed")
               > _value(before, "assistd_runs_total", status="failed"), what="the failed run's count")
    after = _samples(server)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("assistd_runs_total", status="completed") == 1
    assert grew("assistd_runs_total", status="failed") == 1
    assert grew("assistd_run_duration_seconds_count") == 2
    assert grew("assistd_run_time_to_first_token_seconds_count") >= 1
    assert grew("assistd_upstream_requests_total", outcome="ok") == 1
    assert grew("assistd_upstream_requests_total", outcome="server_error") == 1
    assert grew("assistd_upstream_request_duration_seconds_count") >= 1
    assert grew("assistd_http_requests_total", method="POST", route="/v1/threads/{thread_id}/runs",
                status="200") == 2
    assert grew("assistd_http_requests_total", method="GET", route="/v1/threads/{thread_id}/runs/{run_id}",
                status="200") >= 2
    assert not any(name == "assistd_http_requests_total" and thread.id in dict(labels).get("route", "")
                   for name, labels in after)  # templates, never raw paths
    for gauge in ("assistd_queued_runs", "assistd_in_progress_runs", "assistd_active_streams",
                  "assistd_code_sessions", "assistd_executing_runs"):
        assert (gauge, frozenset()) in after, gauge
    assert ("assistd_ingestion_files", frozenset({("status", "completed")})) in after
    assert _value(after, "assistd_database_up") == 1
    # What makes a cancel slow: the loop's lag and the database's waits, measured since the start.
    for stall in ("assistd_event_loop_lag_max_seconds", "assistd_event_loop_lag_recent_max_seconds",
                  "assistd_event_loop_stalls_total", "assistd_db_wait_max_seconds", "assistd_db_waits_total",
                  "assistd_db_wait_seconds_total", "assistd_db_slow_waits_total"):
        assert (stall, frozenset()) in after, stall
    assert _value(after, "assistd_event_loop_lag_max_seconds") > 0  # the monitor runs and has measured
    assert _value(after, "assistd_db_waits_total") > 0  # the runs above wrote


def test_metrics_need_the_api_key_and_readyz_does_not(make_server: Any) -> None:
    server = make_server(env={"ASSISTD_API_KEYS": "metrics-key-1"})
    assert httpx.get(f"{server.root_url}/metrics").status_code == 401
    assert _value(_samples(server), "assistd_database_up") == 1
    ready = httpx.get(f"{server.root_url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}


def test_an_open_stream_is_counted_and_carries_a_request_id(make_server: Any, upstream: FakeUpstream) -> None:
    server = make_server()
    client = server.client()
    upstream.on("stream-gauge", Reply.hang(after_chunks=1))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream-gauge"}])
    stream = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant(client).id, stream=True)
    try:
        assert stream.response.headers["x-request-id"].startswith("req_")
        run_id = next(e.data.id for e in stream if e.event == "thread.run.created")
        assert _value(_samples(server), "assistd_active_streams") == 1
        client.beta.threads.runs.cancel(run_id, thread_id=thread.id)
        assert [e.event for e in stream][-1] == "thread.run.cancelled"
    finally:
        stream.close()
    wait_until(lambda: _value(_samples(server), "assistd_active_streams") == 0, what="the stream to be uncounted")


def test_queued_runs_gauge_reads_the_database_at_scrape_time(make_server: Any, upstream: FakeUpstream) -> None:
    server = make_server(env={"ASSISTD_WORKER_CONCURRENCY": "1"})
    client = server.client()
    upstream.on("gauge-hang", Reply.hang(after_chunks=1))
    helper = assistant(client)
    first = client.beta.threads.create(messages=[{"role": "user", "content": "gauge-hang"}])
    second = client.beta.threads.create(messages=[{"role": "user", "content": "gauge-hang"}])
    running = client.beta.threads.runs.create(thread_id=first.id, assistant_id=helper.id)
    waiting = client.beta.threads.runs.create(thread_id=second.id, assistant_id=helper.id)
    upstream.wait_for_requests(1)
    samples = _samples(server)
    assert _value(samples, "assistd_queued_runs") == 1
    assert _value(samples, "assistd_in_progress_runs") == 1
    assert _value(samples, "assistd_executing_runs") == 1
    client.beta.threads.runs.cancel(running.id, thread_id=first.id)
    client.beta.threads.runs.cancel(waiting.id, thread_id=second.id)


# ---------------------------------------------------------------- health


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="needs PostgreSQL to take the database away")
def test_readyz_answers_503_while_the_database_is_unreachable(upstream: FakeUpstream, databases: Any,
                                                             tmp_path: Path) -> None:
    url = databases.new("postgresql")
    name = url.rsplit("/", 1)[1]
    with AssistdServer(upstream.base_url, database_url=url, data_dir=tmp_path) as server:
        assert httpx.get(f"{server.root_url}/readyz").status_code == 200
        server.sql("SELECT 1")
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            ready = httpx.get(f"{server.root_url}/readyz", timeout=15)
            assert ready.status_code == 503
            assert "database" in ready.json()["problems"], ready.json()
        finally:
            _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert httpx.get(f"{server.root_url}/readyz", timeout=15).status_code == 200


def _admin(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="Redis is used with PostgreSQL")
def test_readyz_names_redis_when_it_is_gone_and_the_worker_metrics_port_serves(
        upstream: FakeUpstream, databases: Any, tmp_path: Path) -> None:
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                              "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = databases.new("postgresql")
    metrics_port = free_port()
    try:
        _wait_for_port(port)
        env = {"ASSISTD_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        with AssistdServer(upstream.base_url, database_url=url, env=env, role="api",
                           data_dir=tmp_path / "api") as api, \
                AssistdServer(upstream.base_url, database_url=url, role="worker", data_dir=tmp_path / "worker",
                              env={**env, "ASSISTD_METRICS_PORT": str(metrics_port)}) as worker:
            upstream.on("worker-metrics", Reply.text("done"))
            client = api.client()
            thread = client.beta.threads.create(messages=[{"role": "user", "content": "worker-metrics"}])
            assert poll(client, thread.id, assistant_id=assistant(client).id).status == "completed"
            worker_root = f"http://127.0.0.1:{metrics_port}"
            wait_until(lambda: _value(_samples(worker, worker_root), "assistd_runs_total", status="completed") == 1,
                       what="the worker to count the run")
            assert _value(_samples(api), "assistd_runs_total", status="completed") == 0  # counted where it ran
            assert httpx.get(f"{worker_root}/readyz").status_code == 200
            redis.kill()
            redis.wait(10)
            for root in (api.root_url, worker_root):
                ready = httpx.get(f"{root}/readyz", timeout=15)
                assert ready.status_code == 503 and "redis" in ready.json()["problems"], ready.text
            assert httpx.get(f"{api.root_url}/healthz").status_code == 200  # alive all the same
    finally:
        redis.kill()
        redis.wait(10)


def _wait_for_port(port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


# ---------------------------------------------------------------- start-up errors


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(("settings", "code", "says"), [
    ({"ASSISTD_DATABASE_URL": "mysql://root:pw@db/x"}, 2, "ASSISTD_DATABASE_URL must be a URL starting with"),
    ({"ASSISTD_UPSTREAM_TIMEOUT": "soon"}, 2, "ASSISTD_UPSTREAM_TIMEOUT must be a number"),
    ({"ASSISTD_CODE_MEMORY_MB": "3"}, 2, "ASSISTD_CODE_MEMORY_MB must be at least 64"),
    ({"ASSISTD_DATABASE_POOL_SIZE": "1"}, 2, "ASSISTD_DATABASE_POOL_SIZE must be at least 2"),
    ({"ASSISTD_PGVECTOR": "maybe"}, 2, "ASSISTD_PGVECTOR must be one of"),
    ({"ASSISTD_LOG_FORMAT": "xml"}, 2, "ASSISTD_LOG_FORMAT must be one of text, json"),
    ({"ASSISTD_UPSTREAM_MAX_TOKENS_PARAM": "tokens"}, 2, "ASSISTD_UPSTREAM_MAX_TOKENS_PARAM must be one of"),
    ({"ASSISTD_DATABASE_URL": "postgresql://postgres@127.0.0.1:{dead}/x"}, 3,
     "cannot reach the database at 127.0.0.1:{dead} (ASSISTD_DATABASE_URL)"),
    ({"ASSISTD_DATABASE_URL": POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/assistd_missing_db"}, 3,
     "database 'assistd_missing_db' does not exist"),
    ({"ASSISTD_REDIS_URL": "redis://127.0.0.1:{dead}/0"}, 4, "cannot reach Redis at 127.0.0.1:{dead}"),
], ids=["database-scheme", "not-a-number", "below-minimum", "pool-too-small", "bad-switch", "log-format",
        "max-tokens-param", "database-refused", "database-missing", "redis-refused"])
def test_a_bad_setting_is_one_line_and_a_documented_exit_code(tmp_path: Path, settings: dict[str, str],
                                                               code: int, says: str) -> None:
    dead = str(free_port())
    env = _env(tmp_path, **{k: v.replace("{dead}", dead) for k, v in settings.items()})
    result = _assistd(["serve", "--port", str(free_port())], env)
    line = _one_line(result)
    assert result.returncode == code, line
    assert says.replace("{dead}", dead) in line
    assert "pw@" not in line  # a URL's password is never repeated


def test_a_missing_database_is_created_by_migrate_create_database(tmp_path: Path) -> None:
    name = "assistd_t_created_" + os.urandom(3).hex()
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        result = _assistd(["migrate", "--create-database"], _env(tmp_path, ASSISTD_DATABASE_URL=url))
        assert result.returncode == 0, result.stderr
        assert f"created database '{name}'" in result.stdout and "applied migrations: [1," in result.stdout
        again = _assistd(["migrate", "--create-database"], _env(tmp_path, ASSISTD_DATABASE_URL=url))
        assert again.returncode == 0 and "created" not in again.stdout and "up to date" in again.stdout
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_no_upstream_key_with_the_default_upstream_warns_at_start(tmp_path: Path) -> None:
    server = AssistdServer("", data_dir=tmp_path, env={"ASSISTD_UPSTREAM_API_KEY": "", "OPENAI_API_KEY": ""})
    with server:
        pass
    warning = [line for line in server.log_text().splitlines() if "WARNING" in line and "upstream" in line]
    assert warning and "https://api.openai.com/v1" in warning[0] and "ASSISTD_UPSTREAM_API_KEY" in warning[0]


# ---------------------------------------------------------------- assistd check


@pytest.mark.timeout(180)
def test_check_passes_with_every_dependency_and_prints_a_table(upstream: FakeUpstream, databases: Any,
                                                               tmp_path: Path) -> None:
    settings = {"ASSISTD_UPSTREAM_BASE_URL": upstream.base_url, "ASSISTD_EMBEDDINGS_MODEL": "fake-embed"}
    if "postgresql" in BACKENDS:
        settings |= {"ASSISTD_DATABASE_URL": databases.new("postgresql"), "ASSISTD_REDIS_URL": REDIS_URL}
    _assistd(["migrate"], _env(tmp_path, **settings))
    result = _assistd(["check"], _env(tmp_path, **settings), timeout=150)
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["database"].split()[1] == "ok" and "migrations current" in rows["database"]
    assert rows["upstream"].split()[1] == "ok" and f"GET {upstream.base_url}/models" in rows["upstream"]
    assert rows["embeddings"].split()[1] == "ok"
    if "postgresql" in BACKENDS:
        assert rows["redis"].split()[1] == "ok"
    sandbox = rows["code_interpreter"].split()[1]
    assert sandbox == "ok" or "not offered" in rows["code_interpreter"], rows["code_interpreter"]
    assert result.returncode == (0 if sandbox == "ok" else 1), result.stderr


def test_check_fails_naming_the_url_it_could_not_reach(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = _env(tmp_path, ASSISTD_UPSTREAM_BASE_URL=dead, ASSISTD_CODE_INTERPRETER="off")
    assert _assistd(["migrate"], env).returncode == 0
    result = _assistd(["check"], env)
    assert result.returncode == 1
    upstream_row = next(line for line in result.stdout.splitlines() if line.startswith("upstream"))
    assert "FAILED" in upstream_row and f"{dead}/models" in upstream_row
    assert "failed: upstream" in result.stderr
    assert next(line for line in result.stdout.splitlines() if line.startswith("database")).split()[1] == "ok"


# ---------------------------------------------------------------- the command line


def test_help_gives_every_command_and_option_its_default_and_variable(tmp_path: Path) -> None:
    env = _env(tmp_path)
    top = _assistd(["--help"], env).stdout
    for command in ("serve", "worker", "migrate", "check", "setup-sandbox"):
        assert command in top
        assert _assistd([command, "--help"], env).returncode == 0
    serve = _assistd(["serve", "--help"], env).stdout
    assert "ASSISTD_HOST, else 127.0.0.1" in " ".join(serve.split())
    assert "ASSISTD_PORT, else 8000" in " ".join(serve.split())
    assert "docs/settings.md" in serve
    assert "ASSISTD_METRICS_PORT" in _assistd(["worker", "--help"], env).stdout


def test_a_bare_assistd_serves(tmp_path: Path, upstream: FakeUpstream) -> None:
    port = free_port()
    env = _env(tmp_path, ASSISTD_UPSTREAM_BASE_URL=upstream.base_url, ASSISTD_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "assistd"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "bare assistd did not serve"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


# ---------------------------------------------------------------- traces


def _exported_spans(log: str) -> list[dict[str, Any]]:
    """The spans OTEL_TRACES_EXPORTER=console wrote: indented JSON objects, `{` … `}` at column 0."""
    spans, current = [], []
    for line in log.splitlines():
        if line == "{":
            current = [line]
        elif current:
            current.append(line)
            if line == "}":
                spans.append(json.loads("\n".join(current)))
                current = []
    return spans


def test_a_runs_spans_join_the_trace_of_the_request_that_created_it(make_server: Any, upstream: FakeUpstream,
                                                                    backend: str) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "assistd-test"}
    if backend == "postgresql":  # the run executes in another process than the API that took it
        env["ASSISTD_REDIS_URL"] = REDIS_URL
    api = make_server(env=env, role="api" if backend == "postgresql" else "serve")
    runner = make_server(env={**env, "ASSISTD_DATABASE_URL": api.env["ASSISTD_DATABASE_URL"]}, role="worker") \
        if backend == "postgresql" else api
    client = api.client()
    upstream.on("traced", Reply.text("traced answer"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "traced"}])
    trace_id = os.urandom(16).hex()
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant(client).id, poll_interval_ms=20,
        extra_headers={"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
    assert run.status == "completed"
    api.stop()
    runner.stop()
    api_spans, run_spans = _exported_spans(api.log_text()), _exported_spans(runner.log_text())
    create = next(s for s in api_spans if s["name"] == "POST /v1/threads/{thread_id}/runs")
    turn = next(s for s in run_spans if s["name"] == "run turn")
    chat = next(s for s in run_spans if s["name"] == "chat fake-model")
    assert create["context"]["trace_id"] == turn["context"]["trace_id"] == chat["context"]["trace_id"] \
        == f"0x{trace_id}"
    assert turn["parent_id"] == create["context"]["span_id"]
    assert chat["parent_id"] == turn["context"]["span_id"]
    assert turn["attributes"]["assistd.run_id"] == run.id
    assert chat["attributes"]["gen_ai.usage.output_tokens"] == run.usage.completion_tokens
    assert create["resource"]["attributes"]["service.name"] == "assistd-test"
