"""Turning a call's kernel messages and /mnt/data changes into an Output."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

MAX_IMAGES = 10  # per call; more are dropped, saying so
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
Snapshot = dict[str, tuple[int, int, int]]  # relative path → (inode, size, mtime_ns)


class Sink:
    """Collects a call's output: text up to a limit (the rest only counted), PNG images, errors."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.kept = self.dropped = self.images_dropped = 0
        self.images: list[bytes] = []
        self.error = False
        self.stopping = False  # interrupted by us: its KeyboardInterrupt is not the code's error

    def add(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "stream":
            self.text(content["text"])
        elif msg_type in ("execute_result", "display_data"):
            self._display(content["data"])
        elif msg_type == "error" and not self.stopping:
            self.error = True
            self.text(ANSI.sub("", "\n".join(content["traceback"])) + "\n")

    def _display(self, data: dict[str, Any]) -> None:
        if "image/png" in data:
            if len(self.images) < MAX_IMAGES:
                self.images.append(base64.b64decode(data["image/png"]))
            else:
                self.images_dropped += 1
        elif "text/plain" in data:
            self.text(data["text/plain"] + "\n")

    def text(self, text: str) -> None:
        room = self.max_chars - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(len(text), room)
        self.dropped += max(0, len(text) - max(room, 0))

    def note(self, line: str) -> None:
        """A line from assistd itself; never cut."""
        self.parts.append(("" if not self.parts or self.parts[-1].endswith("\n") else "\n") + line + "\n")

    def logs(self) -> str:
        if self.dropped:
            self.note(f"[output truncated: {self.dropped} more characters not shown]")
        if self.images_dropped:
            self.note(f"[{self.images_dropped} more images not shown]")
        self.dropped = self.images_dropped = 0
        return "".join(self.parts)


# ---------------------------------------------------------------- files


def snapshot(top: Path) -> Snapshot:
    """Regular files under `top` (symlinks are not followed, nor reported)."""
    found: Snapshot = {}
    pending = [top]
    while pending:
        folder = pending.pop()
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(info.st_mode):
                    found[os.path.relpath(entry.path, top)] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    return sorted(name for name, sig in after.items() if before.get(name) != sig)


def copy_out(top: Path, names: list[str], dest: Path) -> list[Path]:
    """Copy the named files out of the sandbox's reach, never following a link, so what
    the caller reads can't be swapped afterwards."""
    copies = []
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            _copy_regular_file(top, name, target)
            copies.append(target)
    return copies


def _copy_regular_file(source_top: Path, name: str, target: Path) -> None:
    fd = open_beneath(source_top, name)
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{name} is not a regular file")
        with open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def open_beneath(top: Path, name: str) -> int:
    """Open top/name for reading, following no symlink on the way (the sandbox could have
    turned any folder of the path into a link to a host file)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW
    fd = os.open(top, flags | os.O_DIRECTORY)
    try:
        *folders, last = name.split("/")
        for folder in folders:
            inner = os.open(folder, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(last, flags | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


def safe_name(name: str) -> str:
    """A file name for /mnt/data: its last path component, never empty, '.' or '..'."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "")
    return base if base not in ("", ".", "..") else "file"


def copy_in(files: list[tuple[str, Path]], data: Path, uid: int) -> list[str]:
    """Copy (not link: the sandbox may write to them) the caller's files into /mnt/data,
    through a fresh temporary name and a rename, so no link planted there is followed."""
    names = []
    for original, host in files:
        name = safe_name(original)
        temporary = data / f".assistd-incoming-{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out, open(host, "rb") as src:
            shutil.copyfileobj(src, out)
            os.fchown(fd, uid, uid)
        os.replace(temporary, data / name)
        names.append(name)
    return names
