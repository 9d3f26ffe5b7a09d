"""A full data disk: writes answer a clear 507, and deleting files still works and frees space.

The data dir is a small tmpfs mounted for the test (root only; skipped where mounting is not
permitted), filled to the last byte as another program on the machine would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.server import AssistdServer

MB = 1024 * 1024
DISK_FULL = {"message": "The server's data disk is full: nothing more can be stored until space is freed "
                        "(deleting files still works).", "type": "server_error", "param": None, "code": "disk_full"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "tmpfs", str(mount)],
                              capture_output=True, text=True, check=False)
        problem = done.stderr.strip() if done.returncode else ""
    except FileNotFoundError:
        problem = "there is no mount command"
    if problem:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one failed: {problem}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, name: str = "filler") -> Path:
    """Write a file until the disk has no byte left."""
    filler = folder / name
    with filler.open("wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(bytes(MB))
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    assert free_bytes(folder) < 4096
    return filler


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def assert_disk_full(call: Callable[[], Any]) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == 507
    assert caught.value.body == DISK_FULL


def write_until_refused(client: openai.OpenAI) -> None:
    """Assistants with long instructions until one no longer fits: the database's own writes."""
    for _ in range(40):
        try:
            client.beta.assistants.create(model="gpt-4o", instructions="x" * 250_000)
        except openai.APIStatusError as exc:
            assert exc.status_code == 507 and exc.body == DISK_FULL
            return
    raise AssertionError("40 assistants of 250 KB fitted on a full disk")


def test_on_a_full_data_disk_writes_get_507_and_deleting_files_frees_space(
        make_server: Callable[..., AssistdServer], small_disk: Path, backend: str) -> None:
    server = make_server(env={"ASSISTD_DATA_DIR": str(small_disk), "ASSISTD_DISK_RESERVE_MB": "8"})
    with server.client() as client:
        binaries = [client.files.create(file=(f"{i}.bin", os.urandom(MB)), purpose="assistants") for i in range(4)]
        notes = client.files.create(file=("notes.txt", b"quokka marsupial island " * 40_000), purpose="assistants")
        store = client.vector_stores.create(file_ids=[notes.id])
        deadline = time.monotonic() + 60
        while client.vector_stores.files.retrieve(notes.id, vector_store_id=store.id).status == "in_progress":
            assert time.monotonic() < deadline, "still ingesting after 60 s"
            time.sleep(0.05)
        filler = fill(small_disk)

        assert_disk_full(lambda: client.files.create(file=("more.bin", os.urandom(MB)), purpose="assistants"))
        assert not [p for p in (small_disk / "files").iterdir() if p.name.endswith(".part")]
        if backend == "sqlite":  # the database lives on the full disk too
            write_until_refused(client)
        assert client.files.delete(binaries[0].id).deleted  # on the full disk, without a restart

    fillers = [filler, fill(small_disk, "filler-2")]  # full again
    server.restart()  # on the full disk
    with server.client() as client:
        for file in [notes, *binaries[1:]]:  # notes.txt's chunks take more room than its bytes
            assert client.files.delete(file.id).deleted
        for file in [notes, *binaries]:
            with pytest.raises(openai.NotFoundError):
                client.files.retrieve(file.id)
        assert free_bytes(small_disk) > MB
        assert client.vector_stores.retrieve(store.id).file_counts.total == 0
        again = client.files.create(file=("again.bin", b"fits now"), purpose="assistants")
        assert client.files.content(again.id).read() == b"fits now"
    for each in fillers:
        each.unlink()
