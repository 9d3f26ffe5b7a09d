"""The queries of assistants, threads and their messages; those of runs are in
lifecycle/run_sql.py (`Store.runs`). Methods return API-shaped dicts."""

from __future__ import annotations

from typing import Any

from assistd.domain import objects as o
from assistd.domain.errors import invalid, not_found
from assistd.lifecycle.run_sql import RunSQL, insert_message
from assistd.storage.db import Database, Executor
from assistd.storage.documents import from_row, split
from assistd.storage.pages import PageParams, fetch_page, list_object

Obj = dict[str, Any]


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.runs = RunSQL(db)  # runs, their steps and messages: the lifecycle's queries

    # ------------------------------------------------------------ assistants

    async def insert_assistant(self, assistant: Obj) -> Obj:
        data, metadata = split(assistant)
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
        found: Obj = from_row(row)
        return found

    async def update_assistant(self, assistant_id: str, changes: Obj) -> Obj:
        async with self.db.transaction() as tx:
            assistant = await self.get_assistant(assistant_id, tx)
            assistant.update(changes)
            data, metadata = split(assistant)
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
        return list_object([from_row(r) for r in rows], more)

    # ------------------------------------------------------------ threads

    async def insert_thread(self, thread: Obj, messages: list[Obj], db: Executor | None = None) -> Obj:
        if db is None:
            async with self.db.transaction() as tx:
                return await self.insert_thread(thread, messages, tx)
        data, metadata = split(thread)
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
        found: Obj = from_row(row)
        return found

    async def update_thread(self, thread_id: str, changes: Obj) -> Obj:
        async with self.db.transaction() as tx:
            thread = await self.get_thread(thread_id, tx)
            thread.update(changes)
            data, metadata = split(thread)
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
        await insert_message(db or self.db, message)
        return message

    async def add_user_message(self, message: Obj) -> Obj:
        async with self.db.transaction() as tx:
            await self.lock_idle_thread(tx, message["thread_id"])
            return await self.insert_message(message, tx)

    async def get_message(self, thread_id: str, message_id: str, db: Executor | None = None) -> Obj:
        row = await (db or self.db).fetchone(
            "SELECT data, metadata FROM messages WHERE id = :id AND thread_id = :t",
            id=message_id, t=thread_id,
        )
        if row is None:
            raise not_found("message", message_id)
        found: Obj = from_row(row)
        return found

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
        return list_object([from_row(r) for r in rows], more)
