"""Sessions: one live sandboxed kernel per key (a thread id), started on first use,
stopped when idle or when room is needed, restarted (and said so) after it died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections import OrderedDict
from pathlib import Path

from assistd.execution.code_interpreter import outputs, sandbox
from assistd.execution.code_interpreter.kernel import Kernel, KernelDied
from assistd.execution.code_interpreter.limits import MIB, Limits, Output
from assistd.execution.code_interpreter.outputs import Sink

log = logging.getLogger(__name__)
REMEMBERED_ENDINGS = 10_000  # keys whose session ended, so their next call says restarted


class Session:
    """A key's sandbox: its tmpfs (files survive a kernel restart) and its kernel, if running."""

    def __init__(self, key: str, root: Path, python: Path, limits: Limits) -> None:
        self.key, self.python, self.limits = key, python, limits
        sid = secrets.token_hex(6)
        self.dirs = sandbox.SessionDirs(root / "sessions" / sid)
        self.outbox = root / "outputs" / sid
        self.kernel: Kernel | None = None
        self.lock = asyncio.Lock()
        self.users = 0  # calls holding or awaiting the lock
        self.last_used = time.monotonic()
        self.ended_because = ""  # why the previous kernel (or session) of this key ended
        self.calls = 0
        self.cleanup: asyncio.Task[None] | None = None  # an abandoned call being interrupted

    @property
    def idle(self) -> bool:
        return self.users == 0 and (self.cleanup is None or self.cleanup.done())

    def open(self) -> None:
        sandbox.prepare_session(self.dirs, self.limits)
        self.outbox.mkdir(parents=True)

    async def close(self) -> None:
        await self._cleaned_up()
        if self.kernel is not None:
            await self.kernel.stop()
            self.kernel = None
        await asyncio.to_thread(self._remove_folders)

    def _remove_folders(self) -> None:
        sandbox.remove_session(self.dirs)
        shutil.rmtree(self.outbox, ignore_errors=True)

    # ------------------------------------------------------------ one call

    async def execute(self, code: str, files_in: list[tuple[str, Path]]) -> Output:
        await self._cleaned_up()
        sink = Sink(self.limits.output_chars)
        try:
            restarted = await self._ensure_kernel(sink)
        except KernelDied as failed:
            log.error("code_interpreter: %s", failed)
            return Output(logs="[the Python session could not be started]", error=True)
        try:
            await asyncio.to_thread(outputs.copy_in, files_in, self.dirs.data, sandbox.SANDBOX_UID)
        except OSError as exc:
            sink.note(f"[could not copy the files into /mnt/data: {exc.strerror or exc}]")
            return Output(logs=sink.logs(), error=True, restarted=restarted)
        before = await asyncio.to_thread(outputs.snapshot, self.dirs.data)
        timed_out = await self._run(code, sink)
        files = await asyncio.to_thread(self._files_since, before, sink)
        return Output(logs=sink.logs(), images=sink.images, files=files, error=sink.error,
                      timed_out=timed_out, restarted=restarted)

    async def _ensure_kernel(self, sink: Sink) -> bool:
        """Start the kernel if there is none; True (with a note) if an earlier one had ended."""
        if self.kernel is not None and self.kernel.alive:
            return False
        if self.kernel is not None:
            await self.kernel.stop()
            self.ended_because = self.ended_because or "it stopped unexpectedly"
        kernel = Kernel(self.dirs, self.python, self.limits)
        await kernel.start()
        self.kernel = kernel
        if not self.ended_because:
            return False
        sink.note(f"[a new Python session was started: the previous one ended ({self.ended_because}); "
                  "variables from before are gone]")
        self.ended_because = ""
        return True

    async def _run(self, code: str, sink: Sink) -> bool:
        """Run the cell within the call's time limit; True if it had to be stopped."""
        assert self.kernel is not None
        kernel = self.kernel
        msg_id = await kernel.submit(code, sink)
        timed_out = False
        try:
            await asyncio.wait_for(kernel.collect(msg_id, sink), self.limits.call_seconds)
        except TimeoutError:
            timed_out = True
            await kernel.interrupt(msg_id, sink)
            sink.note(f"[execution stopped: the call exceeded its {self.limits.call_seconds:g} s time limit]")
        except asyncio.CancelledError:
            # The caller (a cancelled run) need not wait for the kernel to finish the call,
            # up to INTERRUPT_GRACE: the interrupt goes on in the background, and the
            # session's next call (or its closing) waits for it.
            self.cleanup = asyncio.create_task(self._abandon(kernel, msg_id))
            raise
        except KernelDied as died:
            sink.error = True
            self.ended_because = f"{died} during a call"
            sink.note(f"[{died} during this call (a limit, or the code, stopped it); "
                      "variables are lost, files in /mnt/data are kept]")
        await self._after_call(kernel, sink)
        return timed_out

    async def _cleaned_up(self) -> None:
        if self.cleanup is not None:
            await asyncio.wait({self.cleanup})  # not cancelled if this caller is
            self.cleanup = None

    async def _abandon(self, kernel: Kernel, msg_id: str) -> None:
        """The caller gave up on this call: interrupt it and leave the kernel ready."""
        if kernel.alive:
            await kernel.interrupt(msg_id, Sink(0))
        await self._after_call(kernel, Sink(0))

    async def _after_call(self, kernel: Kernel, sink: Sink) -> None:
        """No process outlives the call that started it."""
        killed = await asyncio.to_thread(kernel.kill_strays)
        if kernel.strays_killed_for_memory:
            sink.note(f"[processes started by the code were stopped: together they used more than "
                      f"{self.limits.memory_bytes // MIB} MiB]")
        elif killed:
            sink.note(f"[{killed} processes started by the code were stopped at the end of the call]")
        if not kernel.alive and not self.ended_because:
            self.ended_because = "it was stopped after a call it did not finish"

    def _files_since(self, before: outputs.Snapshot, sink: Sink) -> list[Path]:
        self.calls += 1
        shutil.rmtree(self.outbox, ignore_errors=True)  # the previous call's copies
        names = outputs.changed(before, outputs.snapshot(self.dirs.data))
        budget = self.limits.files_out_budget
        handout = outputs.copy_out(self.dirs.data, names, self.outbox / str(self.calls), budget)
        if handout.left_out:
            sink.note(outputs.left_out_note(handout.left_out, budget))
        return handout.copies


class SessionPool:
    """Up to `max_sessions` live sessions, one per key; see the package docstring."""

    def __init__(self, root: Path, *, max_sessions: int = 8, idle_seconds: float = 3600.0,
                 limits: Limits | None = None, python: Path | None = None) -> None:
        self.root = root
        self.max_sessions, self.idle_seconds = max_sessions, idle_seconds
        self.limits = limits or Limits()
        self.python = python or sandbox.default_python()
        self.sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self.endings: OrderedDict[str, str] = OrderedDict()  # key → why its last session ended
        self.reaper: asyncio.Task[None] | None = None
        self._clear_leftovers()

    def _clear_leftovers(self) -> None:
        """Unmount and delete what an earlier process left under root (it may have died)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for mount_point in sandbox.mounts_under(self.root):
            sandbox.unmount(mount_point)
        for sub in ("sessions", "outputs"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir(mode=0o711)
        self.root.chmod(0o711)  # the sandbox uid must reach its own folders to bind them
        closed = [p for p in self.root.resolve().parents if not p.stat().st_mode & 0o001]
        if closed:
            raise ValueError(f"{closed[0]} must be searchable by others (o+x): the sandbox uid binds folders under {self.root}")

    async def execute(self, key: str, code: str, files_in: list[tuple[str, Path]] | None = None) -> Output:
        """Run `code` in `key`'s session (started if needed) with `files_in` in /mnt/data."""
        self._start_reaper()
        session = await self._session_for(key)
        if session is None:
            return Output(logs="[no Python session available: all are busy; try again later]", error=True)
        session.users += 1
        try:
            async with session.lock:
                return await session.execute(code, list(files_in or []))
        finally:
            session.users -= 1
            session.last_used = time.monotonic()

    async def _session_for(self, key: str) -> Session | None:
        session = self.sessions.get(key)
        if session is not None:
            self.sessions.move_to_end(key)
            return session
        if len(self.sessions) >= self.max_sessions and not await self._evict_one():
            return None
        session = Session(key, self.root, self.python, self.limits)
        session.ended_because = self.endings.pop(key, "")
        self.sessions[key] = session
        try:
            await asyncio.to_thread(session.open)
        except BaseException:
            self.sessions.pop(key, None)
            raise
        return session

    async def _evict_one(self) -> bool:
        """Stop the least recently used idle session; False if every session is busy."""
        for key, session in self.sessions.items():
            if session.idle:
                await self._end(key, "assistd needed room for another thread's session")
                return True
        return False

    async def _end(self, key: str, why: str) -> None:
        session = self.sessions.pop(key)
        self.endings[key] = why
        while len(self.endings) > REMEMBERED_ENDINGS:
            self.endings.popitem(last=False)
        log.info("code_interpreter session for %s stopped: %s", key, why)
        await session.close()

    # ------------------------------------------------------------ idle sessions

    def _start_reaper(self) -> None:
        if self.reaper is None or self.reaper.done():
            self.reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        period = min(max(self.idle_seconds / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(period)
            await self.reap_idle()

    async def reap_idle(self) -> None:
        """Stop every session unused for idle_seconds."""
        now = time.monotonic()
        for key, session in list(self.sessions.items()):
            if session.idle and now - session.last_used > self.idle_seconds:
                await self._end(key, f"unused for over {self.idle_seconds:g} s")

    async def close(self) -> None:
        """Stop every kernel and remove every session's files."""
        if self.reaper is not None:
            self.reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reaper
        for key in list(self.sessions):
            session = self.sessions.pop(key)
            await session.close()
