"""Text extraction in a child process with its own memory and time limits.

A parser fed a crafted file can take gigabytes or minutes. In a child (`python -m
assistd.execution.extract`) it costs neither the server's memory nor its event loop, which
only waits on the child's pipe. The child limits itself (`RLIMIT_AS`, so an allocation past the
limit is a MemoryError; `RLIMIT_CPU`, so it ends even if the server died) and the server kills
it at the wall-clock deadline. A fresh process a file also means nothing one file did to a
parser can touch the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass
from typing import Any

from assistd.execution.extract import MAX_FILE_TOKENS, ExtractionError

CHILD = [sys.executable, "-m", "assistd.execution.extract"]
READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    seconds: float
    max_tokens: int = MAX_FILE_TOKENS


def memory_error(limits: Limits) -> ExtractionError:
    return ExtractionError("invalid_file", f"The file needs more than {limits.memory_bytes >> 20} MB of memory "
                                           "to be processed.")


def time_error(limits: Limits) -> ExtractionError:
    return ExtractionError("invalid_file", f"The file could not be processed within {limits.seconds:g} seconds.")


async def extract_chunks(filename: str, path: str, strategy: dict[str, Any], limits: Limits) -> list[str]:
    """The chunks of one file, extracted by a child process within `limits`; an ExtractionError
    says why there are none (a limit the child went past included)."""
    request = {"filename": filename, "path": path, "strategy": strategy, "max_tokens": limits.max_tokens,
               "memory_bytes": limits.memory_bytes, "seconds": limits.seconds}
    child = await asyncio.create_subprocess_exec(
        *CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None)
    try:
        try:
            output = await asyncio.wait_for(_talk(child, json.dumps(request).encode(), limits), limits.seconds)
        except TimeoutError:
            raise time_error(limits) from None
        return await asyncio.to_thread(_chunks, output, child.returncode, limits)
    finally:
        await _end(child)


async def _talk(child: asyncio.subprocess.Process, request: bytes, limits: Limits) -> bytearray:
    """Send the request, read the answer (no more than the child could hold), wait for the exit."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(request)
    with contextlib.suppress(ConnectionError):
        await child.stdin.drain()
    child.stdin.close()
    output = bytearray()
    while piece := await child.stdout.read(READ_BYTES):
        output += piece
        if len(output) > limits.memory_bytes:
            raise memory_error(limits)
    await child.wait()
    return output


def _chunks(output: bytearray, returncode: int | None, limits: Limits) -> list[str]:
    """The child's answer: a JSON header line, then (on success) the chunks' bytes back to back."""
    header, newline, body = output.partition(b"\n")
    if not newline:
        raise _died(returncode, limits)
    answer = json.loads(header)
    if answer.get("memory"):
        raise memory_error(limits)
    if "error" in answer:
        raise ExtractionError(answer["error"]["code"], answer["error"]["message"])
    chunks, at = [], 0
    view = memoryview(body)
    for length in answer["lengths"]:
        chunks.append(str(view[at:at + length], "utf-8"))
        at += length
    return chunks


def _died(returncode: int | None, limits: Limits) -> ExtractionError:
    if returncode == -signal.SIGXCPU:
        return time_error(limits)
    if returncode in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT):
        # the kernel's OOM killer, or an allocation failing in C code that could not raise
        return memory_error(limits)
    return ExtractionError("server_error", f"The file's parser stopped unexpectedly (exit code {returncode}).")


async def _end(child: asyncio.subprocess.Process) -> None:
    """Kill the child if it still runs (a timeout, or the ingestion was cancelled) and reap it."""
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await asyncio.shield(child.wait())
