"""The `assistd` command: `assistd serve [--host] [--port]`, `assistd migrate`."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket

import uvicorn

from assistd.config import Settings, load_settings
from assistd.storage.db import open_database
from assistd.storage.migrate import migrate

log = logging.getLogger("assistd")


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _serve(settings: Settings, host: str, port: int) -> int:
    if not settings.api_keys and not _is_loopback(host):
        log.error(
            "refusing to listen on %s without ASSISTD_API_KEYS: anyone could use your upstream. "
            "Set ASSISTD_API_KEYS or listen on 127.0.0.1.", host,
        )
        return 2
    from assistd.http.app import create_app

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 1,
    )
    return 0


async def _migrate(settings: Settings) -> None:
    db = open_database(settings.resolved_database_url)
    await db.connect()
    try:
        applied = await migrate(db)
        print(f"applied migrations: {applied or 'none (up to date)'}")
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assistd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server with its run worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    sub.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):  # one line per upstream request is too many
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings()
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        return 0
    return _serve(settings, args.host, args.port)
