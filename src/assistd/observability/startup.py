"""Start-up checks: a dependency that can't be used is one clear line and a documented exit
code, never a traceback.

Exit codes: 2 a setting or the command line is wrong; 3 the database can't be reached, doesn't
exist or refuses us; 4 Redis can't be reached; 1 `assistd check` found a failing dependency.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from urllib.parse import urlsplit

from assistd.config import OPENAI_BASE_URL, Settings
from assistd.storage.db import open_database
from assistd.storage.migrate import migrate

log = logging.getLogger("assistd")
EXIT_SETTING, EXIT_DATABASE, EXIT_REDIS, EXIT_CHECK = 2, 3, 4, 1
CONNECT_SECONDS = 10.0


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def where(url: str, default_port: int) -> str:
    """`host:port` of a URL, never its user or password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def database_problem(settings: Settings, exc: BaseException) -> StartupError:
    """One line for why the database can't be used."""
    url = settings.resolved_database_url
    if not settings.is_postgres:
        path = url.removeprefix("sqlite:///")
        return StartupError(f"cannot open the SQLite database {path} (ASSISTD_DATA_DIR, ASSISTD_DATABASE_URL): "
                            f"{exc}", EXIT_DATABASE)
    import asyncpg

    at = where(url, 5432)
    name = database_name(url)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StartupError(f"database {name!r} does not exist on the PostgreSQL server at {at}: create it "
                            f"with `assistd migrate --create-database` (or `createdb {name}`)", EXIT_DATABASE)
    if isinstance(exc, asyncpg.PostgresError):
        return StartupError(f"the PostgreSQL server at {at} refused database {name!r}: {exc}", EXIT_DATABASE)
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {CONNECT_SECONDS:g}s"
    return StartupError(f"cannot reach the database at {at} (ASSISTD_DATABASE_URL): {reason}", EXIT_DATABASE)


def redis_problem(settings: Settings, exc: BaseException) -> StartupError:
    return StartupError(f"cannot reach Redis at {where(settings.redis_url, 6379)} (ASSISTD_REDIS_URL): "
                        f"{exc or type(exc).__name__}", EXIT_REDIS)


async def check_database(settings: Settings) -> list[int]:
    """Connect and migrate; returns the versions applied now."""
    db = open_database(settings.resolved_database_url, 2)
    try:
        await asyncio.wait_for(db.connect(), CONNECT_SECONDS)
        return await migrate(db)
    except (OSError, TimeoutError, sqlite3.Error) as exc:
        raise database_problem(settings, exc) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("asyncpg"):
            raise database_problem(settings, exc) from exc
        raise
    finally:
        await db.close()


async def check_redis(settings: Settings) -> None:
    if not settings.redis_url:
        return
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=CONNECT_SECONDS)
    try:
        await redis.ping()
    except Exception as exc:
        raise redis_problem(settings, exc) from exc
    finally:
        await redis.aclose()


async def preflight(settings: Settings) -> None:
    """What `serve` and `worker` need before they start: raises StartupError with one line."""
    await check_database(settings)
    await check_redis(settings)


def warn_about_upstream(settings: Settings) -> None:
    if settings.upstream_base_url.rstrip("/") == OPENAI_BASE_URL and not settings.upstream_api_key:
        log.warning("no upstream key and the default upstream %s: runs will fail. Set "
                    "ASSISTD_UPSTREAM_BASE_URL to your Chat Completions server, or "
                    "ASSISTD_UPSTREAM_API_KEY (or OPENAI_API_KEY)", OPENAI_BASE_URL)


async def create_database(settings: Settings) -> bool:
    """CREATE DATABASE for a PostgreSQL URL naming one that doesn't exist; False if it did."""
    import asyncpg

    url = settings.resolved_database_url
    name = database_name(url)
    admin = url.rsplit("/", 1)[0] + "/postgres"
    try:
        conn = await asyncio.wait_for(asyncpg.connect(admin), CONNECT_SECONDS)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise database_problem(settings, exc) from exc
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
        return True
    except asyncpg.PostgresError as exc:
        raise database_problem(settings, exc) from exc
    finally:
        await conn.close()
