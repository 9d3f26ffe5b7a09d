"""Uploaded files: their rows, and their bytes as one file per id in the data dir's `files/`.

An upload is written to `<id>.part`, synced and renamed to `<id>`, and only then is its row
inserted: every row has its bytes, and a crash leaves at most an orphan file, never a row
without bytes. Client-given names are only ever a column, never part of a path.

A delete removes the row, then the bytes. Only when a full disk refuses the row's delete do
the bytes go first (they are the room the database needs), then if need be the disk reserve
(`space`); a crash in between leaves a row without bytes, which another delete removes.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

from assistd.domain import objects as o
from assistd.domain.errors import not_found
from assistd.domain.ids import now
from assistd.storage.db import Database
from assistd.storage.pages import PageParams, fetch_page, list_object
from assistd.storage.space import DiskReserve, disk_full_error, is_disk_full
from assistd.storage.vector_stores import detach_everywhere

Obj = dict[str, Any]

FILE_COLUMNS = "id, created_at, bytes, filename, purpose, expires_at"
_SAFE_ID = re.compile(r"file-[A-Za-z0-9]{1,64}")
LIVE = "(expires_at IS NULL OR expires_at > :now)"


class Blob:
    """The bytes of one upload on their way to disk, written by a helper thread in large pieces."""

    FLUSH_AT = 1 << 20

    def __init__(self, file_id: str, path: Path) -> None:
        self.file_id = file_id
        self.path = path
        self.partial = path.with_name(path.name + ".part")
        self.size = 0
        self._buffer = bytearray()
        self._handle: BinaryIO | None = None

    async def open(self) -> None:
        self._handle = await asyncio.to_thread(self._create)

    def _create(self) -> BinaryIO:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        return self.partial.open("xb")

    def add(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)

    @property
    def should_flush(self) -> bool:
        return len(self._buffer) >= self.FLUSH_AT

    async def flush(self) -> None:
        if self._buffer and self._handle is not None:
            data, self._buffer = self._buffer, bytearray()
            await asyncio.to_thread(self._handle.write, data)

    async def commit(self) -> None:
        """Write what is left, sync it, and move it to its final name."""
        await self.flush()
        await asyncio.to_thread(self._finish)

    def _finish(self) -> None:
        assert self._handle is not None, "blob not open"
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        """Remove every trace of the upload (it failed or was refused). Sync: safe while cancelled."""
        self._buffer = bytearray()
        if self._handle is not None:
            self._handle.close()
        self.partial.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


class FileStore:
    def __init__(self, db: Database, folder: Path, reserve: DiskReserve | None = None) -> None:
        self.db = db
        self.folder = folder
        self.reserve = reserve

    def path(self, file_id: str) -> Path:
        """Where a file's bytes live; only ids of our own making get this far."""
        if not _SAFE_ID.fullmatch(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.folder / file_id

    def blob(self, file_id: str) -> Blob:
        return Blob(file_id, self.path(file_id))

    async def add(self, row: Obj, blob: Blob) -> Obj:
        """Make an upload's bytes final, then insert its row (bytes first: see the module's doc)."""
        try:
            await blob.commit()
            await self._insert(row)
        except BaseException:
            blob.discard()
            raise
        return o.file_object(row)

    async def add_bytes(self, filename: str, purpose: str, data: bytes) -> Obj:
        """A new File made by assistd itself (e.g. written by code_interpreter)."""
        blob = self.blob(o.new_file_id())
        await blob.open()
        blob.add(data)
        return await self.add(o.new_file_row(blob.file_id, filename, purpose, len(data), None), blob)

    async def _insert(self, row: Obj) -> None:
        await self.db.execute(
            "INSERT INTO files (id, created_at, bytes, filename, purpose, expires_at) "
            "VALUES (:id, :created_at, :bytes, :filename, :purpose, :expires_at)",
            **row,
        )

    async def get(self, file_id: str) -> Obj:
        row = await self.db.fetchone(
            f"SELECT {FILE_COLUMNS} FROM files WHERE id = :id AND {LIVE}", id=file_id, now=now()
        )
        if row is None:
            raise not_found("file", file_id)
        return o.file_object(row)

    async def filename(self, file_id: str) -> str | None:
        """The file's name, or None when it no longer exists (what ingestion needs, nothing more)."""
        row = await self.db.fetchone("SELECT filename FROM files WHERE id = :f", f=file_id)
        return None if row is None else str(row["filename"])

    async def list(self, page: PageParams, purpose: str | None) -> Obj:
        scope, params = LIVE, {"now": now(), "purpose": purpose}
        if purpose:
            scope += " AND purpose = :purpose"
        rows, more = await fetch_page(self.db, "files", FILE_COLUMNS, scope, params, page)
        return list_object([o.file_object(r) for r in rows], more)

    async def delete(self, file_id: str) -> None:
        """Delete the row and remove the file from every vector store in one transaction, then
        the bytes (a crash in between leaves an orphan file, not a row)."""
        try:
            await self._delete_row(file_id)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            await self._delete_on_full_disk(file_id)
            return
        await self._unlink(file_id)

    async def _delete_row(self, file_id: str) -> None:
        async with self.db.transaction() as tx:
            count = await tx.execute(f"DELETE FROM files WHERE id = :id AND {LIVE}", id=file_id, now=now())
            if not count:
                raise not_found("file", file_id)
            await detach_everywhere(tx, self.db.dialect, file_id)

    async def _delete_on_full_disk(self, file_id: str) -> None:
        """The database has no room to record the delete: free the file's bytes, then if that was
        not enough the reserve, and try again; the reserve is taken again when there is room."""
        await self.get(file_id)  # an unknown file is NotFound before anything is removed
        await self._unlink(file_id)
        try:
            await self._delete_row(file_id)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            if self.reserve is None or not await self.reserve.release():
                raise disk_full_error() from exc
            await self._delete_row_or_full(file_id)
        if self.reserve is not None:
            await self.reserve.keep()

    async def _delete_row_or_full(self, file_id: str) -> None:
        try:
            await self._delete_row(file_id)
        except Exception as exc:
            if is_disk_full(exc):
                raise disk_full_error() from exc
            raise

    async def purge_expired(self) -> None:
        """Delete files past their `expires_at`, rows and bytes."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("DELETE FROM files WHERE expires_at <= :now RETURNING id", now=now())
            for row in rows:
                await detach_everywhere(tx, self.db.dialect, row["id"])
        for row in rows:
            await self._unlink(row["id"])

    async def _unlink(self, file_id: str) -> None:
        await asyncio.to_thread(self.path(file_id).unlink, missing_ok=True)
