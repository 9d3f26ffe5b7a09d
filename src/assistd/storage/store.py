"""Every query assistd runs, grouped by object. Methods return API-shaped dicts."""

from __future__ import annotations

import json
from typing import Any

from assistd.domain import objects as o
from assistd.domain.errors import invalid, not_found
from assistd.domain.ids import now
from assistd.domain.run_state import ACTIVE, RunStatus, sources
from assistd.storage.db import Database, Executor, expand_in
from assistd.storage.pages import PageParams, fetch_page, list_object

Obj = dict[str, Any]

RUN_COLUMNS = (
    "id, thread_id, assistant_id, created_at, status, data, metadata, started_at, expires_at, "
    "cancelled_at, failed_at, completed_at, required_action, last_error, incomplete_details, usage"
)


def _doc(row: Obj) -> Obj:
    """Rows that keep the whole object in `data`, with `metadata` beside it."""
    obj: Obj = json.loads(row["data"])
    obj["metadata"] = json.loads(row["metadata"])
    return obj


def _split(obj: Obj) -> tuple[str, str]:
    body = {k: v for k, v in obj.items() if k != "metadata"}
    return o.dumps(body), o.dumps(obj.get("metadata") or {})


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ assistants

    async def insert_assistant(self, assistant: Obj) -> Obj:
        data, metadata = _split(assistant)
        await self.db.execute(
            "INSERT INTO assistants (id, created_at, data, metadata) VALUES (:id, :c, :d, :m)",
            id=assistant["id"], c=assistant["created_at"], d=data, m=metadata,
        )
        return assistant

    async def get_assistant(self, assistant_id: str, db: Executor | None = None) -> Obj:
        row = await (db or self.db).fetchone(
            "SELECT data, metadata FROM assistants WHERE id = :id", id=assistant_id
        )
        if row is None:
            raise not_found("assistant", assistant_id)
        return _doc(row)

    async def update_assistant(self, assistant_id: str, changes: Obj) -> Obj:
        async with self.db.transaction() as tx:
            assistant = await self.get_assistant(assistant_id, tx)
            assistant.update(changes)
            data, metadata = _split(assistant)
            await tx.execute(
                "UPDATE assistants SET data = :d, metadata = :m WHERE id = :id",
                d=data, m=metadata, id=assistant_id,
            )
        return assistant

    async def delete(self, table: str, kind: str, object_id: str) -> None:
        if not await self.db.execute(f"DELETE FROM {table} WHERE id = :id", id=object_id):
            raise not_found(kind, object_id)

    async def list_assistants(self, page: PageParams) -> Obj:
        rows, more = await fetch_page(self.db, "assistants", "data, metadata", "1 = 1", {}, page)
        return list_object([_doc(r) for r in rows], more)

    # ------------------------------------------------------------ threads

    async def insert_thread(self, thread: Obj, messages: list[Obj], db: Executor | None = None) -> Obj:
        if db is None:
            async with self.db.transaction() as tx:
                return await self.insert_thread(thread, messages, tx)
        data, metadata = _split(thread)
        await db.execute(
            "INSERT INTO threads (id, created_at, data, metadata) VALUES (:id, :c, :d, :m)",
            id=thread["id"], c=thread["created_at"], d=data, m=metadata,
        )
        for message in messages:
            await self.insert_message(message, db)
        return thread

    async def get_thread(self, thread_id: str, db: Executor | None = None) -> Obj:
        row = await (db or self.db).fetchone(
            "SELECT data, metadata FROM threads WHERE id = :id", id=thread_id
        )
        if row is None:
            raise not_found("thread", thread_id)
        return _doc(row)

    async def update_thread(self, thread_id: str, changes: Obj) -> Obj:
        async with self.db.transaction() as tx:
            thread = await self.get_thread(thread_id, tx)
            thread.update(changes)
            data, metadata = _split(thread)
            await tx.execute(
                "UPDATE threads SET data = :d, metadata = :m WHERE id = :id",
                d=data, m=metadata, id=thread_id,
            )
        return thread

    async def delete_thread(self, thread_id: str) -> str | None:
        """Delete a thread with its messages and runs; returns the run that was active on it."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "DELETE FROM threads WHERE id = :id RETURNING active_run_id", id=thread_id
            )
        if row is None:
            raise not_found("thread", thread_id)
        return row["active_run_id"]  # type: ignore[no-any-return]

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

    async def lock_idle_thread(self, tx: Executor, thread_id: str) -> None:
        """Within a transaction: hold the thread's row and insist no run is active on it.

        The no-op UPDATE takes the row lock on PostgreSQL, so a concurrent run create
        waits for this transaction instead of slipping in between check and write.
        """
        row = await tx.fetchone(
            "UPDATE threads SET active_run_id = active_run_id WHERE id = :id "
            "RETURNING active_run_id",
            id=thread_id,
        )
        if row is None:
            raise not_found("thread", thread_id)
        if row["active_run_id"] is not None:
            active = row["active_run_id"]
            raise invalid(f"Can't add messages to {thread_id} while a run {active} is active.")

    # ------------------------------------------------------------ messages

    async def insert_message(self, message: Obj, db: Executor | None = None) -> Obj:
        data, metadata = _split(message)
        await (db or self.db).execute(
            "INSERT INTO messages (id, thread_id, run_id, created_at, data, metadata) "
            "VALUES (:id, :t, :r, :c, :d, :m)",
            id=message["id"], t=message["thread_id"], r=message["run_id"],
            c=message["created_at"], d=data, m=metadata,
        )
        return message

    async def add_user_message(self, message: Obj) -> Obj:
        async with self.db.transaction() as tx:
            await self.lock_idle_thread(tx, message["thread_id"])
            return await self.insert_message(message, tx)

    async def save_message(self, message: Obj, db: Executor | None = None) -> None:
        """Write a message's body (content, status…), leaving metadata to its own writers."""
        data, _ = _split(message)
        await (db or self.db).execute(
            "UPDATE messages SET data = :d WHERE id = :id", d=data, id=message["id"]
        )

    async def save_message_bodies(self, messages: list[Obj], tx: Any) -> None:
        """`save_message` for many messages in one statement (within the transaction `tx`)."""
        await tx.executemany("UPDATE messages SET data = :d WHERE id = :id",
                             [{"d": _split(m)[0], "id": m["id"]} for m in messages])

    async def get_message(self, thread_id: str, message_id: str, db: Executor | None = None) -> Obj:
        row = await (db or self.db).fetchone(
            "SELECT data, metadata FROM messages WHERE id = :id AND thread_id = :t",
            id=message_id, t=thread_id,
        )
        if row is None:
            raise not_found("message", message_id)
        return _doc(row)

    async def update_message_metadata(self, thread_id: str, message_id: str, metadata: Obj) -> Obj:
        async with self.db.transaction() as tx:
            message = await self.get_message(thread_id, message_id, tx)
            message["metadata"] = metadata
            await tx.execute(
                "UPDATE messages SET metadata = :m WHERE id = :id",
                m=o.dumps(metadata), id=message_id,
            )
        return message

    async def delete_message(self, thread_id: str, message_id: str) -> None:
        count = await self.db.execute(
            "DELETE FROM messages WHERE id = :id AND thread_id = :t", id=message_id, t=thread_id
        )
        if not count:
            raise not_found("message", message_id)

    async def list_messages(self, thread_id: str, page: PageParams, run_id: str | None) -> Obj:
        await self.get_thread(thread_id)
        scope, params = "thread_id = :t", {"t": thread_id}
        if run_id:
            scope, params = scope + " AND run_id = :r", {**params, "r": run_id}
        rows, more = await fetch_page(self.db, "messages", "data, metadata", scope, params, page)
        return list_object([_doc(r) for r in rows], more)

    async def thread_messages(self, thread_id: str) -> list[Obj]:
        rows = await self.db.fetchall(
            "SELECT data, metadata FROM messages WHERE thread_id = :t ORDER BY seq", t=thread_id
        )
        return [_doc(r) for r in rows]

    # ------------------------------------------------------------ runs

    async def create_run(self, run_row: Obj, additional_messages: list[Obj], db: Executor | None = None) -> Obj:
        """Insert a queued run, taking the thread's active-run lock in the same transaction."""
        if db is None:
            async with self.db.transaction() as tx:
                return await self.create_run(run_row, additional_messages, tx)
        thread_id = run_row["thread_id"]
        taken = await db.fetchone(
            "UPDATE threads SET active_run_id = :r WHERE id = :t AND active_run_id IS NULL "
            "RETURNING id",
            r=run_row["id"], t=thread_id,
        )
        if taken is None:
            row = await db.fetchone("SELECT active_run_id FROM threads WHERE id = :t", t=thread_id)
            if row is None:
                raise not_found("thread", thread_id)
            raise invalid(f"Thread {thread_id} already has an active run {row['active_run_id']}.")
        for message in additional_messages:
            await self.insert_message(message, db)
        await db.execute(
            "INSERT INTO runs (id, thread_id, assistant_id, created_at, status, data, metadata, "
            "expires_at, traceparent) VALUES (:id, :thread_id, :assistant_id, :created_at, :status, :data, "
            ":metadata, :expires_at, :traceparent)",
            **{"traceparent": None, **run_row},
        )
        return await self.get_run(thread_id, run_row["id"], db)

    async def get_run(self, thread_id: str, run_id: str, db: Executor | None = None) -> Obj:
        row = await (db or self.db).fetchone(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :id AND thread_id = :t",
            id=run_id, t=thread_id,
        )
        if row is None:
            raise not_found("run", run_id)
        return o.run_from_row(row)

    async def run_traceparent(self, run_id: str) -> str | None:
        """The trace context of the request that created the run (internal, for tracing)."""
        row = await self.db.fetchone("SELECT traceparent FROM runs WHERE id = :id", id=run_id)
        return None if row is None else row["traceparent"]

    async def get_run_by_id(self, run_id: str, db: Executor | None = None) -> Obj | None:
        row = await (db or self.db).fetchone(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :id", id=run_id)
        return None if row is None else o.run_from_row(row)

    async def list_runs(self, thread_id: str, page: PageParams) -> Obj:
        await self.get_thread(thread_id)
        rows, more = await fetch_page(self.db, "runs", RUN_COLUMNS, "thread_id = :t", {"t": thread_id}, page)
        return list_object([o.run_from_row(r) for r in rows], more)

    async def update_run_metadata(self, thread_id: str, run_id: str, metadata: Obj) -> Obj:
        async with self.db.transaction() as tx:
            count = await tx.execute(
                "UPDATE runs SET metadata = :m WHERE id = :id AND thread_id = :t",
                m=o.dumps(metadata), id=run_id, t=thread_id,
            )
            if not count:
                raise not_found("run", run_id)
            return await self.get_run(thread_id, run_id, tx)

    async def transition(
        self,
        run_id: str,
        target: RunStatus,
        db: Executor | None = None,
        *,
        only_from: tuple[str, ...] | None = None,
        holder: str | None = None,
        **fields: Any,
    ) -> Obj | None:
        """Guarded status change: applies only if the run's status may go to `target` (and,
        with `holder`, only while that worker still holds the run).

        Returns the updated run, or None when the guard failed (someone else won).
        Entering a terminal status also releases the thread's active-run lock.
        """
        if db is None:
            async with self.db.transaction() as tx:
                return await self.transition(run_id, target, tx, only_from=only_from, holder=holder, **fields)
        if target not in ACTIVE:  # the thread's row is written too: it is locked first
            await self.lock_thread_of_run(db, run_id)
        allowed = only_from or sources(target)
        params: dict[str, Any] = {"id": run_id, "target": target.value}
        held = ""
        if holder is not None:
            held, params["holder"] = " AND worker_id = :holder", holder
        sets = ["status = :target"]
        for key, value in fields.items():
            json_field = key in o.RUN_JSON_STATE_FIELDS
            params[f"f_{key}"] = o.dumps(value) if json_field and value is not None else value
            sets.append(f"{key} = :f_{key}")
        sql = f"UPDATE runs SET {', '.join(sets)} WHERE id = :id AND status IN (:allowed){held} RETURNING {RUN_COLUMNS}"
        row = await db.fetchone(expand_in(sql, "allowed", allowed, params), **params)
        if row is None:
            return None
        if target not in ACTIVE:
            await db.execute(
                "UPDATE threads SET active_run_id = NULL WHERE id = :t AND active_run_id = :r",
                t=row["thread_id"], r=run_id,
            )
        return o.run_from_row(row)

    async def claim_runs(self, worker_id: str, limit: int) -> list[Obj]:
        """Take up to `limit` of the oldest queued runs for this worker (queued → in_progress).

        On PostgreSQL, workers claiming at once skip each other's locked rows.
        """
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        ts = now()
        async with self.db.transaction() as tx:
            # The pick is a materialized CTE: as an `IN (subquery)`, PostgreSQL may re-run the
            # subquery during the update and take more than `limit` rows.
            rows = await tx.fetchall(
                f"WITH picked AS MATERIALIZED (SELECT id FROM runs WHERE status = 'queued' "
                f"ORDER BY seq LIMIT :n{skip_locked}) "
                f"UPDATE runs SET status = 'in_progress', worker_id = :w, heartbeat_at = :hb, started_at = :ts "
                f"WHERE status = 'queued' AND id IN (SELECT id FROM picked) "
                f"RETURNING seq AS claim_order, {RUN_COLUMNS}",
                w=worker_id, hb=float(ts), ts=ts, n=limit,
            )
        rows.sort(key=lambda row: row.pop("claim_order"))
        return [o.run_from_row(row) for row in rows]

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
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(sql, **params)
        return {r["id"]: r["status"] for r in rows}

    async def has_open_step(self, run_id: str) -> bool:
        row = await self.db.fetchone(
            "SELECT id FROM run_steps WHERE run_id = :r AND status = 'in_progress' LIMIT 1", r=run_id
        )
        return row is not None

    async def stale_runs(self, older_than: float) -> list[Obj]:
        rows = await self.db.fetchall(
            "SELECT id, thread_id, status, worker_id FROM runs WHERE status IN ('in_progress', 'cancelling') "
            "AND (heartbeat_at IS NULL OR heartbeat_at < :t)",
            t=older_than,
        )
        return rows

    async def expirable_runs(self, at: int) -> list[Obj]:
        return await self.db.fetchall(
            "SELECT id, thread_id, status FROM runs WHERE status IN ('queued', 'requires_action') "
            "AND expires_at IS NOT NULL AND expires_at <= :t",
            t=at,
        )

    # ------------------------------------------------------------ run steps

    async def save_step(self, step: Obj, db: Executor | None = None) -> None:
        data, metadata = _split(step)
        db = db or self.db
        count = await db.execute(
            "UPDATE run_steps SET status = :s, data = :d WHERE id = :id",
            s=step["status"], d=data, id=step["id"],
        )
        if not count:
            await db.execute(
                "INSERT INTO run_steps (id, run_id, thread_id, created_at, status, data, metadata) "
                "VALUES (:id, :r, :t, :c, :s, :d, :m)",
                id=step["id"], r=step["run_id"], t=step["thread_id"], c=step["created_at"],
                s=step["status"], d=data, m=metadata,
            )

    async def run_steps(self, run_id: str, db: Executor | None = None) -> list[Obj]:
        rows = await (db or self.db).fetchall(
            "SELECT data, metadata FROM run_steps WHERE run_id = :r ORDER BY seq", r=run_id
        )
        return [_doc(r) for r in rows]

    async def get_step(self, thread_id: str, run_id: str, step_id: str) -> Obj:
        row = await self.db.fetchone(
            "SELECT data, metadata FROM run_steps WHERE id = :id AND run_id = :r AND thread_id = :t",
            id=step_id, r=run_id, t=thread_id,
        )
        if row is None:
            raise not_found("run step", step_id)
        return _doc(row)

    async def list_steps(self, thread_id: str, run_id: str, page: PageParams) -> Obj:
        await self.get_run(thread_id, run_id)
        rows, more = await fetch_page(
            self.db, "run_steps", "data, metadata", "run_id = :r", {"r": run_id}, page
        )
        return list_object([_doc(r) for r in rows], more)

    async def run_messages(self, run_id: str, db: Executor | None = None) -> list[Obj]:
        rows = await (db or self.db).fetchall(
            "SELECT data, metadata FROM messages WHERE run_id = :r ORDER BY seq",
            r=run_id,
        )
        return [_doc(r) for r in rows]
