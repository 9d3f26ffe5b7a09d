"""A full data disk: telling it apart from other failures, and keeping room to free space.

When the disk fills, every write fails, and so would a delete: SQLite records a delete in its
write-ahead log before it frees anything, and the log can't grow. So a SQLite deployment keeps
a reserve file in the data dir (ASSISTD_DISK_RESERVE_MB), given up only for a delete that the
full disk refused, and taken again once there is room.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import sqlite3
from pathlib import Path

from assistd.domain.errors import StorageFull

log = logging.getLogger("assistd.storage")
SQLITE_FULL = 13
POSTGRES_DISK_FULL = "53100"
RESERVE_NAME = "disk-reserve"


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, says the disk is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL
                                               or "database or disk is full" in str(exc)):
            return True
        if getattr(exc, "sqlstate", None) == POSTGRES_DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error() -> StorageFull:
    """The request was fine, the server has no room to keep it; deleting files still works."""
    return StorageFull("The server's data disk is full: nothing more can be stored until space is freed "
                       "(deleting files still works).", code="disk_full")


class DiskReserve:
    """A file of `size` bytes that holds room for the database to record deletes on a full disk."""

    def __init__(self, folder: Path, size: int) -> None:
        self.path = folder / RESERVE_NAME
        self.size = size

    async def keep(self) -> None:
        """Make the reserve if it is missing and the disk has room for it twice over (best effort:
        a server must start, and a delete succeed, without it)."""
        if self.size > 0:
            await asyncio.to_thread(self._keep)

    def _keep(self) -> None:
        try:
            if self.path.is_file() and self.path.stat().st_size >= self.size:
                return
            if shutil.disk_usage(self.path.parent).free < 2 * self.size:
                return
            with self.path.open("wb") as out:
                _allocate(out.fileno(), self.size)
        except OSError as exc:
            log.warning("could not keep %d bytes in reserve at %s: %s", self.size, self.path, exc)
            self.path.unlink(missing_ok=True)

    async def release(self) -> bool:
        """Give the room up; False when there was none to give."""
        if not self.path.exists():
            return False
        await asyncio.to_thread(self.path.unlink, missing_ok=True)
        log.warning("the data disk is full: released the %d bytes kept in reserve for deletes", self.size)
        return True


def _allocate(fd: int, size: int) -> None:
    """Take `size` bytes of disk for the file: blocks truly allocated, not a sparse file."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        block = bytes(1 << 20)
        for start in range(0, size, len(block)):
            os.write(fd, block[:size - start])
