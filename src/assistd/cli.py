"""The `assistd` command.

    assistd [serve] [--host H] [--port P]  HTTP API and a run worker in one process (the default)
    assistd serve --no-worker …            HTTP API only
    assistd worker                         executes runs only (metrics on ASSISTD_METRICS_PORT)
    assistd migrate [--create-database]    applies database migrations and exits
    assistd check                          tries every dependency and prints a table
    assistd setup-sandbox                  builds code_interpreter's Python environment

Settings are ASSISTD_* environment variables (docs/settings.md). Exit codes: 0 done, 1 a check
failed, 2 a setting or argument is wrong, 3 the database can't be used, 4 Redis can't be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import uvicorn

from assistd.config import SettingError, Settings, load_settings
from assistd.observability import logs, startup, tracing
from assistd.observability import runs as observed_runs

log = logging.getLogger("assistd")
KEEP_ALIVE_SECONDS = 65
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
SETTINGS_EPILOG = ("Settings come from ASSISTD_* environment variables (ASSISTD_DATABASE_URL, "
                   "ASSISTD_UPSTREAM_BASE_URL, ASSISTD_UPSTREAM_API_KEY, ASSISTD_API_KEYS, ASSISTD_LOG_LEVEL, "
                   "ASSISTD_LOG_FORMAT, …): see docs/settings.md.")


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def split_role_problem(settings: Settings) -> str | None:
    """Why this process can't run as one part of several (API-only or worker-only), if so."""
    if not settings.is_postgres:
        return ("needs PostgreSQL (ASSISTD_DATABASE_URL=postgresql://…): SQLite is one process's "
                "database; run plain `assistd serve` instead")
    if not settings.redis_url:
        return ("needs ASSISTD_REDIS_URL: run events reach streams on other processes through Redis")
    return None


def _serve(settings: Settings, host: str, port: int, with_worker: bool) -> int:
    if not settings.api_keys and not _is_loopback(host):
        log.error(
            "refusing to listen on %s without ASSISTD_API_KEYS: anyone could use your upstream. "
            "Set ASSISTD_API_KEYS or listen on 127.0.0.1.", host,
        )
        return 2
    if not with_worker and (problem := split_role_problem(settings)):
        log.error("`assistd serve --no-worker` %s", problem)
        return 2
    _ready_to_start(settings)
    server = uvicorn.Server(_server_config(settings, host, port, with_worker))
    server.run()
    tracing.shutdown()
    return 0 if server.started else 3  # as uvicorn.run: it could not start (port taken, say)


def _server_config(settings: Settings, host: str, port: int, with_worker: bool) -> uvicorn.Config:
    """uvicorn's settings, with header/body read timeouts and a connection cap (http/connections)."""
    from assistd.http.app import create_app
    from assistd.http.connections import EdgeLimits, server_config

    limits = EdgeLimits(settings.http_header_timeout, settings.http_body_timeout,
                        settings.http_max_connections)
    return server_config(
        create_app(settings, with_worker=with_worker),
        host=host,
        port=port,
        limits=limits,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through our handler (ASSISTD_LOG_FORMAT)
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 1,
        # Clients keep connections between calls: closing idle ones after uvicorn's 5 s
        # default races with a client sending its next request on them (a reset at the client).
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


def _ready_to_start(settings: Settings) -> None:
    """Check the database and Redis (StartupError when unusable), then turn on what watches us."""
    from assistd.execution.embeddings import local_model_problem

    if problem := local_model_problem(settings):
        raise SettingError(f"ASSISTD_EMBEDDINGS_MODEL={settings.embeddings_model}: {problem}")
    asyncio.run(startup.preflight(settings))
    startup.warn_about_upstream(settings)
    observed_runs.configure(settings.upstream_base_url)
    tracing.configure()


async def _migrate(settings: Settings, create: bool = False) -> None:
    if create and settings.is_postgres and await startup.create_database(settings):
        print(f"created database {startup.database_name(settings.resolved_database_url)!r}")
    applied = await startup.check_database(settings)  # one clear line if the database can't be used
    print(f"applied migrations: {applied or 'none (up to date)'}")


async def _work(settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT, then stop it gracefully."""
    from assistd.execution.runtime import close_runtime, open_runtime
    from assistd.execution.worker import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rt = await open_runtime(settings)
    try:
        worker = Worker(rt)
        await worker.start()
        metrics_server = await _start_metrics_server(settings, rt, worker)
        await stop.wait()
        if metrics_server is not None:
            metrics_server.should_exit = True
            await metrics_server.shutdown()
        log.info("stopping: finishing or handing back %d runs", len(worker.turns))
        await worker.stop(settings.shutdown_grace_seconds)
    finally:
        await close_runtime(rt)
    log.info("worker stopped")


async def _start_metrics_server(settings: Settings, rt: object, worker: object) -> uvicorn.Server | None:
    """A worker has no API: with ASSISTD_METRICS_PORT it serves /metrics, /healthz and /readyz."""
    if not settings.metrics_port:
        return None
    from assistd.http.ops import worker_app

    config = uvicorn.Config(worker_app(rt, worker, settings.api_keys), host=settings.metrics_host,  # type: ignore[arg-type]
                            port=settings.metrics_port, log_config=None, access_log=False, lifespan="off")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup()  # not serve(): that would take over our SIGTERM handling
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return server


def _worker(settings: Settings) -> int:
    if problem := split_role_problem(settings):
        log.error("`assistd worker` %s", problem)
        return 2
    if settings.metrics_port and not settings.api_keys and not _is_loopback(settings.metrics_host):
        log.error("refusing to serve metrics on %s without ASSISTD_API_KEYS; set them or "
                  "ASSISTD_METRICS_HOST=127.0.0.1", settings.metrics_host)
        return 2
    _ready_to_start(settings)
    _run_on_fast_loop(_work(settings))
    tracing.shutdown()
    return 0


def _run_on_fast_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop, as uvicorn runs `serve` (uvicorn[standard] installs it): the worker
    is where every upstream chunk is read, and asyncio's own loop spends more per callback."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _check(settings: Settings) -> int:
    from assistd.observability.check import run_checks, table

    results = asyncio.run(run_checks(settings))
    print(table(results))
    failed = [r.name for r in results if r.ok is False]
    if failed:
        print(f"assistd check: failed: {', '.join(failed)}", file=sys.stderr)
        return startup.EXIT_CHECK
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(command="serve", host=None, port=None, no_worker=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", epilog=SETTINGS_EPILOG,
                           help="run the API server with its run worker (the default command)")
    serve.add_argument("--host", default=None,
                       help=f"address to listen on (default: $ASSISTD_HOST, else {DEFAULT_HOST}; a "
                            "non-loopback address needs ASSISTD_API_KEYS)")
    serve.add_argument("--port", type=int, default=None,
                       help=f"TCP port to listen on (default: $ASSISTD_PORT, else {DEFAULT_PORT})")
    serve.add_argument("--no-worker", action="store_true",
                       help="HTTP only: runs are executed by `assistd worker` processes "
                            "(needs ASSISTD_DATABASE_URL=postgresql://… and ASSISTD_REDIS_URL)")
    sub.add_parser("worker", epilog=SETTINGS_EPILOG + " Metrics: ASSISTD_METRICS_PORT, ASSISTD_METRICS_HOST.",
                   help="execute runs only (PostgreSQL and Redis; no API; metrics on ASSISTD_METRICS_PORT)")
    migrate_cmd = sub.add_parser("migrate", epilog=SETTINGS_EPILOG,
                                 help="apply database migrations and exit")
    migrate_cmd.add_argument("--create-database", action="store_true",
                             help="first create the PostgreSQL database ASSISTD_DATABASE_URL names, "
                                  "if it doesn't exist")
    sub.add_parser("check", epilog=SETTINGS_EPILOG,
                   help="try the database, upstream, Redis, embeddings and code_interpreter sandbox; "
                        "exit 1 if any fails")
    setup = sub.add_parser("setup-sandbox",
                           help="build code_interpreter's Python environment (and install bubblewrap "
                                "as root on Debian)")
    setup.add_argument("--target", type=Path, default=None,
                       help="where to build it (default: ASSISTD_CODE_PYTHON, else .venv-code beside "
                            "assistd's venv, where assistd looks for it)")
    setup.add_argument("--quiet", action="store_true", help="less pip output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "setup-sandbox":
        from assistd.execution.code_interpreter.setup import setup_sandbox

        return setup_sandbox(args.target, args.quiet)
    try:
        settings = load_settings()
    except SettingError as exc:
        print(f"assistd: {exc}", file=sys.stderr)
        return startup.EXIT_SETTING
    logs.configure(settings.log_level, settings.log_format,
                   secrets=[settings.upstream_api_key, *settings.api_keys])
    try:
        return _command(args, settings)
    except (startup.StartupError, SettingError) as exc:
        log.error("%s", exc)
        return getattr(exc, "exit_code", startup.EXIT_SETTING)


def _command(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "migrate":
        asyncio.run(_migrate(settings, args.create_database))
        return 0
    if args.command == "check":
        return _check(settings)
    if args.command == "worker":
        return _worker(settings)
    host = settings.host if args.host is None else args.host
    port = settings.port if args.port is None else args.port
    return _serve(settings, host, port, with_worker=not args.no_worker)
