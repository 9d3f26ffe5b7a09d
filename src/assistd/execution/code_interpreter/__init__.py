"""The execution core of the `code_interpreter` tool: sandboxed, persistent Python sessions.

    sandbox_problem(python: Path | None = None) -> str | None
        None if this host can sandbox; else a one-line reason. assistd must then not offer
        the tool (and log the reason at start). Code is never run unsandboxed.

    Limits(memory_bytes=1 GiB, cpu_seconds=600, processes=64, disk_bytes=256 MiB,
           output_chars=20_000, call_seconds=120.0, files_out_bytes=None (= disk_bytes))

    Output(logs: str, images: list[bytes] (PNG), files: list[Path], error: bool,
           timed_out: bool, restarted: bool)
        files: host copies of the files this call created or changed under /mnt/data, valid
        until the key's next call or the end of its session (copy them away, in pieces). At
        most limits.files_out_budget bytes by apparent size and 100 files; the others are
        named in logs.
        restarted: the key had a session before and it ended (died, idle, evicted); its
        variables are gone and the model should be told (logs start with a note saying so).

    SessionPool(root: Path, *, max_sessions: int = 8, idle_seconds: float = 3600.0,
                limits: Limits | None = None, python: Path | None = None)
        await execute(key: str, code: str, files_in: list[tuple[str, Path]] | None = None) -> Output
            key: the thread id; one live IPython kernel per key, variables persist between
            calls. files_in: (original file name, host path), copied into /mnt/data first.
            Cancelling the awaiting task interrupts the kernel (within ~1 s; killed if it
            doesn't stop) and re-raises CancelledError; the session survives. A call past
            limits.call_seconds is interrupted and returned with timed_out=True.
        await close() -> None: stop every kernel and remove the sessions' files.
        Sessions unused for idle_seconds are stopped; with max_sessions live, the least
        recently used idle one is stopped to make room (all busy: an error Output).

    root must be short (unix socket paths live under it) and assistd must run as root.
    The sandbox and its limits are described in docs/code_interpreter.md.
"""

from __future__ import annotations

from assistd.execution.code_interpreter.limits import Limits, Output
from assistd.execution.code_interpreter.sandbox import sandbox_problem
from assistd.execution.code_interpreter.sessions import SessionPool

__all__ = ["Limits", "Output", "SessionPool", "sandbox_problem"]
