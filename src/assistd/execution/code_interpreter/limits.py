"""What one code_interpreter call may use, and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-session resource limits; see docs/code_interpreter.md for what enforces each."""

    memory_bytes: int = 1024 * MIB  # address space of each process in the sandbox (RLIMIT_AS)
    cpu_seconds: int = 600  # CPU time over a kernel's life (RLIMIT_CPU); then it is restarted
    processes: int = 64  # tasks (processes and threads) in the sandbox (RLIMIT_NPROC, own uid)
    disk_bytes: int = 256 * MIB  # /mnt/data, /tmp, /dev/shm and $HOME together (one tmpfs)
    output_chars: int = 20_000  # logs longer than this are cut, saying so
    call_seconds: float = 120.0  # wall clock per call; then the kernel is interrupted
    files_out_bytes: int | None = None  # files handed out per call, by apparent size; None: disk_bytes

    @property
    def files_out_budget(self) -> int:
        return self.disk_bytes if self.files_out_bytes is None else self.files_out_bytes


@dataclass
class Output:
    """The result of one call, as the model should be told about it."""

    logs: str = ""
    images: list[bytes] = field(default_factory=list)  # PNG
    files: list[Path] = field(default_factory=list)  # host copies of files this call created or changed
    error: bool = False  # the code raised (or the session died during the call)
    timed_out: bool = False
    restarted: bool = False  # the key's earlier session had ended; its variables are gone
