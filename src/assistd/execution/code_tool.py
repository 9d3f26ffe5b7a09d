"""The `code_interpreter` tool inside runs: assistd offers the model a `code_interpreter`
function, runs the code itself in the thread's sandboxed Python session
(`execution/code_interpreter`), and records OpenAI's `code_interpreter` tool call, with its
`input` and `outputs` (`logs`, `image`).

Files come in from `tool_resources.code_interpreter.file_ids` (assistant and thread) and from
messages' `attachments` for the tool; they appear under /mnt/data by their names. Files the
code writes there become Files (`purpose: "assistants_output"`); images it displays become
`image` outputs and `image_file` parts of the answer; `sandbox:/mnt/data/…` paths in the
answer carry `file_path` annotations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assistd.config import Settings
from assistd.domain import objects as o
from assistd.domain.errors import NotFound
from assistd.execution.attachments import tool_resource_ids
from assistd.lifecycle.records import RunView, Step
from assistd.storage.files import FileStore
from assistd.storage.store import Store

Obj = dict[str, Any]
log = logging.getLogger("assistd.code")

NAME = "code_interpreter"
MAX_ROUNDS = 10  # code calls in one run before the tool is no longer offered
OUTPUT_PURPOSE = "assistants_output"
PATH_MENTION = re.compile(r"sandbox:/mnt/data/([^\s)\]\"'`]+)")
WRITTEN_NOTE = "[file written: sandbox:/mnt/data/{name} ({file_id})]"
WRITTEN = re.compile(r"^\[file written: sandbox:/mnt/data/(.+) \((file-[A-Za-z0-9]+)\)\]$", re.MULTILINE)
COPY_PIECE = 1 << 20  # bytes read at a time from a written file
INPUT_KEY = re.compile(r'^\s*\{\s*"code"\s*:\s*"')

FUNCTION: Obj = {
    "type": "function",
    "function": {
        "name": NAME,
        "description": (
            "Run Python code in a stateful Jupyter session (variables persist between calls). "
            "The user's files are in /mnt/data; save files for the user there too and refer to "
            "them as sandbox:/mnt/data/<name>. Display charts with plt.show(). There is no "
            "internet access."),
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python code to run."}},
            "required": ["code"],
        },
    },
}


def tool(run: RunView) -> Obj | None:
    return next((t for t in run.get("tools") or [] if t.get("type") == NAME), None)


def rounds(steps: Sequence[Step]) -> int:
    return len(o.tool_calls_of(steps, NAME))


def open_pool(settings: Settings) -> Any:
    """The sandboxed sessions for this process, or None (the tool is then not offered): when
    ASSISTD_CODE_INTERPRETER is off, or this host can't sandbox (logged, with the reason)."""
    if not settings.code_interpreter:
        return None
    from assistd.execution.code_interpreter import Limits, SessionPool, sandbox_problem

    if (problem := sandbox_problem()) is not None:
        log.warning("code_interpreter is not offered: %s", problem)
        return None
    limits = Limits(memory_bytes=settings.code_memory_mb * 1024 * 1024, cpu_seconds=settings.code_cpu_seconds,
                    processes=settings.code_processes, disk_bytes=settings.code_disk_mb * 1024 * 1024,
                    output_chars=settings.code_output_chars, call_seconds=settings.code_call_seconds,
                    files_out_bytes=None if settings.code_files_out_mb is None else settings.code_files_out_mb * 1024 * 1024)
    clear_dead_pools(settings.code_dir)
    root = settings.code_dir / str(os.getpid())  # short (socket paths live under it), one per process
    try:
        pool = SessionPool(root, max_sessions=settings.code_max_sessions,
                           idle_seconds=settings.code_idle_seconds, limits=limits)
    except (OSError, ValueError) as exc:
        log.warning("code_interpreter is not offered: %s", exc)
        return None
    log.info("code_interpreter offered: sandboxed sessions under %s", root)
    return pool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_dead_pools(code_dir: Path) -> None:
    """Unmount and delete the session folders of assistd processes on this host that died
    without closing their pool (killed, or crashed)."""
    from assistd.execution.code_interpreter import sandbox

    if not code_dir.is_dir():
        return
    for folder in code_dir.iterdir():
        if not folder.name.isdigit() or _alive(int(folder.name)):
            continue
        try:
            for mount_point in sandbox.mounts_under(folder):
                sandbox.unmount(mount_point)
            shutil.rmtree(folder)
        except OSError as exc:
            log.warning("could not clear %s, left by a process that died: %s", folder, exc)


# ---------------------------------------------------------------- the input, as it streams


class InputStream:
    """Turns the streamed JSON arguments `{"code": "…"}` into the code, piece by piece."""

    def __init__(self) -> None:
        self.raw = ""
        self.sent = 0  # characters of the decoded code already handed out

    def feed(self, piece: str) -> str:
        """Add streamed argument text; returns the code decoded since the last call."""
        self.raw += piece
        code = _decoded_prefix(self.raw)
        new = code[self.sent:]
        self.sent = len(code)
        return new


def _decoded_prefix(raw: str) -> str:
    """The longest surely-decoded prefix of the `code` string in partial JSON arguments."""
    start = INPUT_KEY.match(raw)
    if start is None:
        return ""
    body = raw[start.end():]
    end = len(body)
    i = 0
    while i < len(body):
        char = body[i]
        if char == '"':
            end = i
            break
        if char == "\\":
            step = 6 if body[i + 1:i + 2] == "u" else 2
            if i + step > len(body):
                end = i
                break
            i += step
            continue
        i += 1
    try:
        decoded = str(json.loads('"' + body[:end] + '"'))
    except json.JSONDecodeError:
        return ""
    if decoded and "\ud800" <= decoded[-1] <= "\udbff":  # half of a \uXXXX\uXXXX pair: wait for the rest
        decoded = decoded[:-1]
    return decoded


def code_of(arguments: str) -> str:
    """The code the model sent (its arguments as JSON, or the bare text if they aren't)."""
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return _decoded_prefix(arguments) or arguments
    if isinstance(parsed, dict):
        return str(parsed.get("code") or "")
    return str(parsed)


# ---------------------------------------------------------------- files in


async def input_file_ids(store: Store, run: RunView) -> list[str]:
    """Files for /mnt/data: the assistant's and thread's resources, and this thread's messages'
    code_interpreter attachments (each once, in that order)."""
    resources = await tool_resource_ids(store, run, NAME, "file_ids")
    attached = o.attached_file_ids(await store.runs.thread_messages(run["thread_id"]), NAME)
    return list(dict.fromkeys([*resources, *attached]))


async def input_files(files: FileStore, file_ids: list[str]) -> list[tuple[str, Path]]:
    """(name, path) of the files that still exist; a deleted one is left out."""
    found = []
    for file_id in file_ids:
        try:
            row = await files.get(file_id)
        except NotFound:
            continue
        found.append((str(row["filename"]), files.path(file_id)))
    return found


# ---------------------------------------------------------------- files out


async def store_written(files: FileStore, paths: list[Path]) -> list[tuple[str, str]]:
    """Each file the code wrote becomes an `assistants_output` File: (name, File id). Streamed
    in pieces, never read whole (the pool has bounded their total size already)."""
    return [(path.name, (await store_file(files, path))["id"]) for path in paths]


async def store_file(files: FileStore, path: Path) -> Obj:
    blob = files.blob(o.new_file_id())
    await blob.open()
    try:
        with open(path, "rb") as source:  # noqa: ASYNC230 - opening is instant; the reads go to a thread
            while piece := await asyncio.to_thread(source.read, COPY_PIECE):
                blob.add(piece)
                await blob.flush()
    except BaseException:
        blob.discard()
        raise
    return await files.add(o.new_file_row(blob.file_id, path.name, OUTPUT_PURPOSE, blob.size, None), blob)


# ---------------------------------------------------------------- the call's record


def call_object(call_id: str, code: str, outputs: list[Obj]) -> Obj:
    return {"id": call_id, "type": NAME, NAME: {"input": code, "outputs": outputs}}


def logs_output(logs: str) -> Obj:
    return {"type": "logs", "logs": logs}


def image_output(file_id: str) -> Obj:
    return {"type": "image", "image": {"file_id": file_id}}


def written_notes(written: list[tuple[str, str]]) -> str:
    """Lines that end a call's logs, one per file its code wrote: (name, File id)."""
    return "\n".join(WRITTEN_NOTE.format(name=name, file_id=file_id) for name, file_id in written)


def tool_output(call: Obj) -> str:
    """What the model reads back: the logs (with the written files' notes) and the images."""
    lines = []
    for output in call[NAME]["outputs"]:
        if output["type"] == "logs":
            lines.append(output["logs"])
        elif output["type"] == "image":
            lines.append(f"[an image was displayed to the user: {output['image']['file_id']}]")
    text = "\n".join(line for line in lines if line)
    return text or "(the code ran and printed nothing)"


def chat_call(call: Obj) -> Obj:
    return {"id": call["id"], "type": "function",
            "function": {"name": NAME, "arguments": json.dumps({"code": call[NAME]["input"]})}}


# ---------------------------------------------------------------- the answer


def written_files(steps: Sequence[Step]) -> dict[str, str]:
    """Name → File id of each file the run's code wrote."""
    written: dict[str, str] = {}
    for call in o.tool_calls_of(steps, NAME):
        for output in call[NAME]["outputs"]:
            if output["type"] == "logs":
                written.update(WRITTEN.findall(output["logs"]))
    return written


def file_paths(text: str, steps: Sequence[Step], *, settled: bool = True,
               written: dict[str, str] | None = None) -> list[Obj]:
    """A `file_path` annotation for each sandbox:/mnt/data/<name> that the run's code wrote
    (`written`, if the caller has it already). While the text still streams (`settled`
    false), a path running to its end may grow: left out."""
    written = written_files(steps) if written is None else written
    found = []
    for match in PATH_MENTION.finditer(text):
        if not settled and match.end() == len(text):
            continue
        name = match.group(1).rstrip(".,;:")
        if name in written:
            end = match.start() + len("sandbox:/mnt/data/") + len(name)
            found.append({"type": "file_path", "text": text[match.start():end],
                          "file_path": {"file_id": written[name]}, "start_index": match.start(), "end_index": end})
    return found


def image_parts(steps: Sequence[Step]) -> list[Obj]:
    """`image_file` content parts for the images the run's code displayed since its last message."""
    since = steps
    for position, step in enumerate(steps):
        if step["step_details"]["type"] == "message_creation":
            since = steps[position + 1:]
    return [{"type": "image_file", "image_file": {"file_id": out["image"]["file_id"]}}
            for call in o.tool_calls_of(since, NAME) for out in call[NAME]["outputs"] if out["type"] == "image"]
