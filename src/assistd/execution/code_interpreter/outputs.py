"""Turning a call's kernel messages and /mnt/data changes into an Output."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAX_IMAGES = 10  # per call; more are dropped, saying so
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # per call, all images together (a chart is some 50 KB)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_FILES_OUT = 100  # files handed out per call; the rest are named in the logs
MAX_NAMED = 20  # files named in that line
COPY_PIECE = 1 << 20
MIB = 1024 * 1024
Snapshot = dict[str, tuple[int, int, int]]  # relative path → (inode, size, mtime_ns)


class Sink:
    """Collects a call's output: text up to a limit (the rest only counted), PNG images up to
    MAX_IMAGES and MAX_IMAGE_BYTES, errors."""

    def __init__(self, max_chars: int, *, keep_images: bool = True) -> None:
        self.max_chars = max_chars
        self.keep_images = keep_images
        self.parts: list[str] = []
        self.kept = self.dropped = self.images_dropped = self.image_bytes = 0
        self.images: list[bytes] = []
        self.error = False
        self.stopping = False  # interrupted by us: its KeyboardInterrupt is not the code's error

    def add(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "stream":
            self.text(str(content["text"]))
        elif msg_type in ("execute_result", "display_data"):
            self._display(content["data"])
        elif msg_type == "error" and not self.stopping:
            self.error = True
            self.text(ANSI.sub("", "\n".join(map(str, content["traceback"]))) + "\n")

    def _display(self, data: dict[str, Any]) -> None:
        if "image/png" in data:
            self._image(str(data["image/png"]))
        elif "text/plain" in data:
            self.text(str(data["text/plain"]) + "\n")

    def _image(self, encoded: str) -> None:
        size = len(encoded) * 3 // 4
        if self.keep_images and len(self.images) < MAX_IMAGES and self.image_bytes + size <= MAX_IMAGE_BYTES:
            self.images.append(base64.b64decode(encoded))
            self.image_bytes += size
        else:
            self.images_dropped += 1

    def text(self, text: str) -> None:
        room = self.max_chars - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(len(text), room)
        self.dropped += max(0, len(text) - max(room, 0))

    def note(self, line: str) -> None:
        """A line from assistd itself; never cut."""
        self.parts.append(("" if not self.parts or self.parts[-1].endswith("\n") else "\n") + line + "\n")

    def absorb(self, earlier: Sink) -> None:
        """Start with what the code printed while no call was running (its background
        threads): kept up to its own max_chars, so the call's own output still has room."""
        if not (earlier.kept or earlier.dropped or earlier.images_dropped):
            return
        self.note("[printed by the code since its last call returned:]")
        self.parts += earlier.parts
        if earlier.dropped:
            self.note(f"[{earlier.dropped} more characters printed since its last call not shown]")
        self.images_dropped += earlier.images_dropped
        self.note("[this call:]")

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


@dataclass
class Handout:
    """The files of one call on their way out: what was copied, and what was over the bound."""

    copies: list[Path] = field(default_factory=list)
    left_out: list[tuple[str, int]] = field(default_factory=list)  # (name, apparent size)


def copy_out(top: Path, names: list[str], dest: Path, budget: int) -> Handout:
    """Copy the named files out of the sandbox's reach, never following a link, so what the
    caller reads can't be swapped afterwards. They may total `budget` bytes of apparent size
    (a sparse file costs the sandbox nothing but is handed out whole); at most MAX_FILES_OUT
    files. Those that don't fit are left out."""
    handout = Handout()
    for name in names:
        with contextlib.suppress(OSError):
            size, copied = _copy_within(top, name, dest / name, budget, len(handout.copies) < MAX_FILES_OUT)
            if not copied:
                handout.left_out.append((name, size))
                continue
            budget -= size
            handout.copies.append(dest / name)
    return handout


def _copy_within(top: Path, name: str, target: Path, budget: int, room: bool) -> tuple[int, bool]:
    """Copy top/name to target if it is a regular file of at most `budget` bytes (and there is
    `room`); returns its size and whether it was copied. Copies at most the size it had when
    opened: the code's background threads may still be writing to it."""
    fd = open_beneath(top, name)
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{name} is not a regular file")
        if info.st_size > budget or not room:
            return info.st_size, False
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            _copy_at_most(src, out, info.st_size)
        return info.st_size, True


def _copy_at_most(src: BinaryIO, out: BinaryIO, limit: int) -> None:
    copied = 0
    while copied < limit:
        piece = src.read(min(COPY_PIECE, limit - copied))
        if not piece:
            break
        out.write(piece)
        copied += len(piece)


def left_out_note(left_out: list[tuple[str, int]], budget: int) -> str:
    """The line that names the files a call wrote but did not hand out."""
    shown = ", ".join(f"/mnt/data/{name} ({size / MIB:.1f} MiB)" for name, size in left_out[:MAX_NAMED])
    more = f" and {len(left_out) - MAX_NAMED} more" if len(left_out) > MAX_NAMED else ""
    return (f"[files not handed out: {shown}{more}; one call hands out at most {MAX_FILES_OUT} files "
            f"of {budget / MIB:g} MiB together]")


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
