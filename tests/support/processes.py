"""Host processes, as tests that check the sandbox's clean-up look for them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def host_pids_ending_with(mark: str) -> list[int]:
    """Host pids of processes whose command line's last argument is `mark`."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[-2:-1] == [mark.encode()]:
                found.append(int(entry))
    return found
