"""Versioned migrations: numbered .sql files, applied in order at start, each recorded once.

Statements end with `;`. A statement preceded by a `-- dialect: sqlite` (or `postgresql`) line
runs on that database only; every other statement runs on both.
"""

from __future__ import annotations

import re
from importlib import resources

from assistd.storage.db import Database

_SEQ = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "BIGSERIAL PRIMARY KEY",
}


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("assistd.storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


async def migrate(db: Database) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    async with db.transaction() as tx:
        if dialect_lock_sql := _LOCK.get(db.dialect):
            await tx.execute(dialect_lock_sql)
        await tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    applied: list[int] = []
    for version, sql in _migrations():
        async with db.transaction() as tx:
            if dialect_lock_sql := _LOCK.get(db.dialect):
                await tx.execute(dialect_lock_sql)
            done = await tx.fetchone(
                "SELECT version FROM schema_migrations WHERE version = :v", v=version
            )
            if done:
                continue
            for statement in statements(sql.replace("{seq}", _SEQ[db.dialect]), db.dialect):
                await tx.execute(statement)
            await tx.execute("INSERT INTO schema_migrations (version) VALUES (:v)", v=version)
            applied.append(version)
    return applied


# Several processes may start at once on PostgreSQL: one migrates, the others wait.
_LOCK = {"postgresql": "SELECT pg_advisory_xact_lock(7413001)"}


_DIALECT = re.compile(r"--\s*dialect:\s*(\w+)\s*")


def statements(sql: str, dialect: str) -> list[str]:
    """The statements of a migration that apply to `dialect`, comments removed."""
    lines = [line for line in sql.splitlines()
             if not line.strip().startswith("--") or _DIALECT.fullmatch(line.strip())]
    found = []
    for chunk in "\n".join(lines).split(";"):
        marks = _DIALECT.findall(chunk)
        text = _DIALECT.sub("", chunk).strip()
        if text and (not marks or dialect in marks):
            found.append(text)
    return found
