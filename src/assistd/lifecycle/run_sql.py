"""Every query about runs, their steps and the messages they write, on SQLite and PostgreSQL.

The guarded writes take their allowed statuses from the caller, who takes them from the
transition table (lifecycle/states.py); the claim, stale and expiry queries take theirs
from the table directly. lifecycle/memory.py answers the same questions in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from assistd.domain import objects as o
from assistd.domain.errors import invalid, not_found
from assistd.domain.ids import now
from assistd.lifecycle.records import Message, Run, RunRow, Step
from assistd.lifecycle.states import ACTIVE, CLAIMABLE, EXPIRABLE, STALE, RunStatus
from assistd.storage.db import Database, Executor, Row, expand_in
from assistd.storage.documents import body, from_row
from assistd.storage.pages import PageParams, fetch_page, list_object

RUN_COLUMNS = (
    "id, thread_id, assistant_id, created_at, status, data, metadata, started_at, expires_at, "
    "cancelled_at, failed_at, completed_at, required_action, last_error, incomplete_details, usage"
)
SAVE_MESSAGE = "UPDATE messages SET data = :d WHERE id = :id"
# The run columns a status change may set beside `status` (names go into SQL: a fixed list).
WRITABLE = frozenset({"started_at", "expires_at", "cancelled_at", "failed_at", "completed_at",
                      "required_action", "last_error", "incomplete_details", "usage",
                      "worker_id", "heartbeat_at"})


def writable(columns: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The columns a status change sets, refused if one is not for it to set."""
    columns = columns or {}
    if stray := set(columns) - WRITABLE:
        raise ValueError(f"runs.{', '.join(sorted(stray))} is not set by a status change")
    return columns


def run_from_row(row: Row) -> Run:
    return cast(Run, o.run_from_row(row))


def new_run(row: RunRow) -> Run:
    """The run a new row stands for, without reading it back."""
    columns: Row = {**row, "started_at": None, "cancelled_at": None, "failed_at": None, "completed_at": None,
                    "required_action": None, "last_error": None, "incomplete_details": None, "usage": None}
    return run_from_row(columns)


async def insert_message(db: Executor, message: Mapping[str, Any]) -> None:
    """A new message row (user's or run's)."""
    await db.execute(
        "INSERT INTO messages (id, thread_id, run_id, created_at, data, metadata) "
        "VALUES (:id, :t, :r, :c, :d, :m)",
        id=message["id"], t=message["thread_id"], r=message["run_id"],
        c=message["created_at"], d=body(message), m=o.dumps(message.get("metadata") or {}),
    )


class RunSQL:
    def __init__(self, db: Database) -> None:
        self.db = db

    def transaction(self) -> Any:
        """A run's changes are a few small statements: inline on SQLite (storage/db.py)."""
        return self.db.transaction(inline=True)

    # ------------------------------------------------------------ runs

    async def lock_thread_of_run(self, tx: Executor, run_id: str) -> bool:
        """Within a transaction that writes a run's rows: lock its thread's row first.

        Deleting a thread locks the thread, then (by cascade) its messages, runs and steps;
        a writer that took a run's rows first and the thread last could wait on it in a
        circle (PostgreSQL's deadlock). KEY SHARE only waits for a delete. False when the
        run or its thread is gone. SQLite's one writer already serializes transactions.
        """
        if self.db.dialect != "postgresql":
            return True
        row = await tx.fetchone(
            "SELECT t.id FROM runs r JOIN threads t ON t.id = r.thread_id WHERE r.id = :r FOR KEY SHARE OF t",
            r=run_id,
        )
        return row is not None

    async def insert_run(self, tx: Executor, row: RunRow, additional: Sequence[Mapping[str, Any]]) -> Run:
        """A queued run, taking the thread's active-run lock in the same transaction."""
        thread_id = row["thread_id"]
        taken = await tx.fetchone(
            "UPDATE threads SET active_run_id = :r WHERE id = :t AND active_run_id IS NULL RETURNING id",
            r=row["id"], t=thread_id,
        )
        if taken is None:
            held = await tx.fetchone("SELECT active_run_id FROM threads WHERE id = :t", t=thread_id)
            if held is None:
                raise not_found("thread", thread_id)
            raise invalid(f"Thread {thread_id} already has an active run {held['active_run_id']}.")
        for message in additional:
            await insert_message(tx, message)
        await tx.execute(
            "INSERT INTO runs (id, thread_id, assistant_id, created_at, status, data, metadata, "
            "expires_at, traceparent) VALUES (:id, :thread_id, :assistant_id, :created_at, :status, :data, "
            ":metadata, :expires_at, :traceparent)",
            **{"traceparent": None, **row},
        )
        return new_run(row)

    async def get_run(self, thread_id: str, run_id: str, tx: Executor | None = None) -> Run:
        row = await (tx or self.db).fetchone(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :id AND thread_id = :t", id=run_id, t=thread_id,
        )
        if row is None:
            raise not_found("run", run_id)
        return run_from_row(row)

    async def get_run_by_id(self, run_id: str, tx: Executor | None = None) -> Run | None:
        row = await (tx or self.db).fetchone(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :id", id=run_id)
        return None if row is None else run_from_row(row)

    async def transition(self, tx: Executor, run_id: str, target: RunStatus, allowed: tuple[str, ...], *,
                         holder: str | None = None, columns: Mapping[str, Any] | None = None) -> Run | None:
        """Guarded status change: applies only while the run's status is in `allowed` (and,
        with `holder`, only while that worker still holds the run); sets `columns` with it.

        Returns the updated run, or None when the guard failed (someone else won).
        Entering a terminal status also releases the thread's active-run lock.
        """
        if target not in ACTIVE:  # the thread's row is written too: it is locked first
            await self.lock_thread_of_run(tx, run_id)
        params: dict[str, Any] = {"id": run_id, "target": target.value}
        held = ""
        if holder is not None:
            held, params["holder"] = " AND worker_id = :holder", holder
        sets = ["status = :target"]
        for key, value in writable(columns).items():
            json_column = key in o.RUN_JSON_STATE_FIELDS
            params[f"f_{key}"] = o.dumps(value) if json_column and value is not None else value
            sets.append(f"{key} = :f_{key}")
        sql = f"UPDATE runs SET {', '.join(sets)} WHERE id = :id AND status IN (:allowed){held} RETURNING {RUN_COLUMNS}"
        row = await tx.fetchone(expand_in(sql, "allowed", allowed, params), **params)
        if row is None:
            return None
        if target not in ACTIVE:
            await tx.execute(
                "UPDATE threads SET active_run_id = NULL WHERE id = :t AND active_run_id = :r",
                t=row["thread_id"], r=run_id,
            )
        return run_from_row(row)

    async def transition_alone(self, thread_id: str, run_id: str, target: RunStatus,
                               allowed: tuple[str, ...]) -> Run | None:
        """A guarded status change that is one statement, committed by itself: for a change
        that writes nothing else (an active status, no columns). None when the guard failed,
        or the run is not the thread's."""
        if target not in ACTIVE:
            raise ValueError(f"{target.value} releases the thread's lock: use transition()")
        params: dict[str, Any] = {"id": run_id, "t": thread_id, "target": target.value}
        sql = (f"UPDATE runs SET status = :target WHERE id = :id AND thread_id = :t "
               f"AND status IN (:allowed) RETURNING {RUN_COLUMNS}")
        row = await self.db.write_one(expand_in(sql, "allowed", allowed, params), **params)
        return None if row is None else run_from_row(row)

    async def claim(self, worker_id: str, limit: int) -> list[Run]:
        """Take up to `limit` of the oldest claimable runs for this worker (→ in_progress).

        On PostgreSQL, workers claiming at once skip each other's locked rows.
        """
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        ts = now()
        params: dict[str, Any] = {"w": worker_id, "hb": float(ts), "ts": ts, "n": limit,
                                  "target": RunStatus.IN_PROGRESS.value}
        # The pick is a materialized CTE: as an `IN (subquery)`, PostgreSQL may re-run the
        # subquery during the update and take more than `limit` rows.
        sql = expand_in(
            f"WITH picked AS MATERIALIZED (SELECT id FROM runs WHERE status IN (:from) "
            f"ORDER BY seq LIMIT :n{skip_locked}) "
            f"UPDATE runs SET status = :target, worker_id = :w, heartbeat_at = :hb, started_at = :ts "
            f"WHERE status IN (:from) AND id IN (SELECT id FROM picked) "
            f"RETURNING seq AS claim_order, {RUN_COLUMNS}",
            "from", CLAIMABLE, params,
        )
        async with self.db.transaction(inline=True) as tx:
            rows = await tx.fetchall(sql, **params)
        rows.sort(key=lambda row: row.pop("claim_order"))
        return [run_from_row(row) for row in rows]

    async def heartbeat(self, worker_id: str, run_ids: list[str], at: float) -> dict[str, str]:
        """Renew this worker's leases; returns the status of each run it still holds.

        A run missing from the answer is no longer this worker's: its lease lapsed, and a
        sweeper settled it or handed it back (both clear `worker_id`).
        """
        if not run_ids:
            return {}
        params: dict[str, Any] = {"w": worker_id, "at": at}
        sql = expand_in(
            "UPDATE runs SET heartbeat_at = :at WHERE worker_id = :w AND id IN (:ids) RETURNING id, status",
            "ids", run_ids, params,
        )
        async with self.db.transaction(inline=True) as tx:
            rows = await tx.fetchall(sql, **params)
        return {r["id"]: r["status"] for r in rows}

    async def stale_runs(self, older_than: float) -> list[Row]:
        """Held runs whose lease was last renewed before `older_than`: id, status, worker_id."""
        params: dict[str, Any] = {"t": older_than}
        sql = expand_in("SELECT id, status, worker_id FROM runs WHERE status IN (:held) "
                        "AND (heartbeat_at IS NULL OR heartbeat_at < :t)", "held", STALE, params)
        return await self.db.fetchall(sql, **params)

    async def expirable_runs(self, at: int) -> list[Row]:
        """Waiting runs past their `expires_at`: id, status."""
        params: dict[str, Any] = {"t": at}
        sql = expand_in("SELECT id, status FROM runs WHERE status IN (:waiting) "
                        "AND expires_at IS NOT NULL AND expires_at <= :t", "waiting", EXPIRABLE, params)
        return await self.db.fetchall(sql, **params)

    # ------------------------------------------------------------ steps and the run's messages

    async def has_open_step(self, run_id: str) -> bool:
        row = await self.db.fetchone(
            "SELECT id FROM run_steps WHERE run_id = :r AND status = 'in_progress' LIMIT 1", r=run_id
        )
        return row is not None

    async def insert_step(self, tx: Executor, step: Step) -> None:
        await tx.execute(
            "INSERT INTO run_steps (id, run_id, thread_id, created_at, status, data, metadata) "
            "VALUES (:id, :r, :t, :c, :s, :d, :m)",
            id=step["id"], r=step["run_id"], t=step["thread_id"], c=step["created_at"],
            s=step["status"], d=body(step), m=o.dumps(step["metadata"]),
        )

    async def save_step(self, tx: Executor, step: Step) -> None:
        await tx.execute("UPDATE run_steps SET status = :s, data = :d WHERE id = :id",
                         s=step["status"], d=body(step), id=step["id"])

    async def run_steps(self, run_id: str, tx: Executor | None = None) -> list[Step]:
        rows = await (tx or self.db).fetchall(
            "SELECT data, metadata FROM run_steps WHERE run_id = :r ORDER BY seq", r=run_id
        )
        return [from_row(r) for r in rows]

    async def insert_message(self, tx: Executor, message: Message) -> None:
        await insert_message(tx, message)

    async def save_message(self, tx: Executor, message: Message) -> None:
        """Write a message's body (content, status…), leaving metadata to its own writers."""
        await tx.execute(SAVE_MESSAGE, d=body(message), id=message["id"])

    async def save_message_bodies(self, tx: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        """`save_message` for many messages in one statement (the streaming runs' partial text)."""
        await tx.executemany(SAVE_MESSAGE, [{"d": body(m), "id": m["id"]} for m in messages])

    async def run_messages(self, run_id: str, tx: Executor | None = None) -> list[Message]:
        rows = await (tx or self.db).fetchall(
            "SELECT data, metadata FROM messages WHERE run_id = :r ORDER BY seq", r=run_id
        )
        return [from_row(r) for r in rows]

    async def thread_messages(self, thread_id: str) -> list[Message]:
        """The thread's whole history, oldest first: what a turn's prompt is built from."""
        rows = await self.db.fetchall(
            "SELECT data, metadata FROM messages WHERE thread_id = :t ORDER BY seq", t=thread_id
        )
        return [from_row(r) for r in rows]

    # ------------------------------------------------------------ what the API reads

    async def run_traceparent(self, run_id: str) -> str | None:
        """The trace context of the request that created the run (internal, for tracing)."""
        row = await self.db.fetchone("SELECT traceparent FROM runs WHERE id = :id", id=run_id)
        return None if row is None else row["traceparent"]

    async def list_runs(self, thread_id: str, page: PageParams) -> dict[str, Any]:
        """A page of the thread's runs (the caller answers 404 for an unknown thread)."""
        rows, more = await fetch_page(self.db, "runs", RUN_COLUMNS, "thread_id = :t", {"t": thread_id}, page)
        return list_object([dict(run_from_row(r)) for r in rows], more)

    async def update_run_metadata(self, thread_id: str, run_id: str, metadata: dict[str, Any]) -> Run:
        async with self.db.transaction(inline=True) as tx:
            count = await tx.execute("UPDATE runs SET metadata = :m WHERE id = :id AND thread_id = :t",
                                     m=o.dumps(metadata), id=run_id, t=thread_id)
            if not count:
                raise not_found("run", run_id)
            return await self.get_run(thread_id, run_id, tx)

    async def get_step(self, thread_id: str, run_id: str, step_id: str) -> Step:
        row = await self.db.fetchone(
            "SELECT data, metadata FROM run_steps WHERE id = :id AND run_id = :r AND thread_id = :t",
            id=step_id, r=run_id, t=thread_id,
        )
        if row is None:
            raise not_found("run step", step_id)
        step: Step = from_row(row)
        return step

    async def list_steps(self, thread_id: str, run_id: str, page: PageParams) -> dict[str, Any]:
        await self.get_run(thread_id, run_id)
        rows, more = await fetch_page(self.db, "run_steps", "data, metadata", "run_id = :r", {"r": run_id}, page)
        return list_object([from_row(r) for r in rows], more)

