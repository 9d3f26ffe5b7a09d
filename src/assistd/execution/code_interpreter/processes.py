"""The processes of a sandbox, seen from the host through /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

KILL_ROUNDS = 200  # a fork loop refills what we kill; NPROC keeps each round small


def _stat(pid: int) -> list[str]:
    """Fields of /proc/pid/stat after the command name (field 3, the state, is [0])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parent_of(pid: int) -> int:
    return int(_stat(pid)[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if parent_of(int(entry)) == pid:
                    found.append(int(entry))
    return found


def children_in_tasks(pid: int) -> list[int]:
    """Children of pid, from its threads' /proc children lists (cheap: no scan of /proc)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def sandbox_pids(bwrap_pid: int) -> tuple[int, int]:
    """(host pid of the sandbox's init, host pid of the kernel) below the outer bwrap."""
    init = children_of(bwrap_pid)[0]
    return init, children_of(init)[0]


def namespace_members(init_pid: int) -> list[int]:
    """Live processes in init_pid's pid namespace."""
    try:
        namespace = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace and _stat(int(entry))[0] != "Z":
                    members.append(int(entry))
    return members


def kill_all(find: Callable[[], list[int]]) -> int:
    """SIGKILL whatever `find` returns until it returns nothing; returns how many were killed."""
    killed = 0
    for _ in range(KILL_ROUNDS):
        pids = find()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.002)
    return killed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError):
        return 0
