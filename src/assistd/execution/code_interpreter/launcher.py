"""Runs inside the sandbox as the session's first process: set the resource limits, then
become the IPython kernel. Standard library only; assistd itself is not visible in the sandbox.

argv: a JSON object {"RLIMIT_…": [soft, hard], …}, then the kernel's own arguments.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Iterator
from typing import Any

STREAM_PIECE = 500_000  # characters per stream message: well under assistd's 8 MiB per message


def send_streams_in_pieces() -> None:
    """ipykernel sends all a stream buffered in one message; assistd drops a message over
    8 MiB, so a large honest print goes out in pieces instead (and is counted, not lost)."""
    from ipykernel import iostream

    flush_buffers = iostream.OutStream._flush_buffers

    def in_pieces(self: Any) -> Iterator[tuple[Any, str]]:
        for parent, data in flush_buffers(self):
            for start in range(0, len(data), STREAM_PIECE):
                yield parent, data[start:start + STREAM_PIECE]

    iostream.OutStream._flush_buffers = in_pieces


def main() -> None:
    for name, value in json.loads(sys.argv[1]).items():
        resource.setrlimit(getattr(resource, name), tuple(value))
    os.nice(10)  # the host's own work goes first
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # as ipykernel_launcher does: the working folder is the code's /mnt/data
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    send_streams_in_pieces()
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


main()
