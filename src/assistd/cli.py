"""The `assistd` command.

    assistd serve [--host H] [--port P]    HTTP API and a run worker in one process (the default)
    assistd serve --no-worker …            HTTP API only
    assistd worker                         executes runs only
    assistd migrate                        applies database migrations and exits
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket

import uvicorn

from assistd.config import Settings, load_settings
from assistd.storage.db import open_database
from assistd.storage.migrate import migrate

log = logging.getLogger("assistd")
KEEP_ALIVE_SECONDS = 65


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
    server = uvicorn.Server(_server_config(settings, host, port, with_worker))
    server.run()
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
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 1,
        # Clients keep connections between calls: closing idle ones after uvicorn's 5 s
        # default races with a client sending its next request on them (a reset at the client).
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


async def _migrate(settings: Settings) -> None:
    db = open_database(settings.resolved_database_url)
    await db.connect()
    try:
        applied = await migrate(db)
        print(f"applied migrations: {applied or 'none (up to date)'}")
    finally:
        await db.close()


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
        await stop.wait()
        log.info("stopping: finishing or handing back %d runs", len(worker.turns))
        await worker.stop(settings.shutdown_grace_seconds)
    finally:
        await close_runtime(rt)
    log.info("worker stopped")


def _worker(settings: Settings) -> int:
    if problem := split_role_problem(settings):
        log.error("`assistd worker` %s", problem)
        return 2
    asyncio.run(_work(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assistd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server with its run worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true",
                       help="HTTP only: runs are executed by `assistd worker` processes")
    sub.add_parser("worker", help="execute runs only (PostgreSQL and Redis; no HTTP)")
    sub.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):  # one line per upstream request is too many
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings()
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        return 0
    if args.command == "worker":
        return _worker(settings)
    return _serve(settings, args.host, args.port, with_worker=not args.no_worker)
