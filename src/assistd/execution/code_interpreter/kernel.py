"""One sandboxed IPython kernel: started with bwrap, spoken to with jupyter_client over
ZMQ unix sockets (the sandbox has no network), interrupted with a control-channel
`interrupt_request`, and killed with its whole pid namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient

from assistd.execution.code_interpreter import sandbox
from assistd.execution.code_interpreter.limits import Limits
from assistd.execution.code_interpreter.outputs import Sink
from assistd.execution.code_interpreter.processes import kill_all, namespace_members, rss_bytes, sandbox_pids

Msg = dict[str, Any]
START_SECONDS = 60.0
POLL_SECONDS = 0.25  # how often a waiting call checks that the kernel is still alive
REPLY_SECONDS = 2.0  # the execute_reply comes with the idle status; don't wait forever
INTERRUPT_GRACE = 1.0  # after an interrupt, how long the kernel has to finish the call
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # a kernel can't make the host buffer more than this per message
PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


class KernelDied(Exception):
    """The kernel process ended (killed, crashed, over a limit) while it was needed."""


def _context() -> zmq.asyncio.Context:
    context = zmq.asyncio.Context()
    context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    context.setsockopt(zmq.LINGER, 0)
    return context


class Kernel:
    """A started kernel. `submit` a cell, `collect` its messages, `interrupt` it, `stop` it."""

    def __init__(self, dirs: sandbox.SessionDirs, python: Path, limits: Limits) -> None:
        self.dirs, self.python, self.limits = dirs, python, limits
        self.proc: asyncio.subprocess.Process | None = None
        self.client: AsyncKernelClient | None = None
        self.init_pid = self.kernel_pid = 0
        self.strays_killed_for_memory = False

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Start the sandbox and wait until the kernel answers kernel_info."""
        connection = self._write_connection_files()
        argv = sandbox.bwrap_argv(self.python, self.dirs.binds,
                                  sandbox.kernel_command(self.limits, f"{sandbox.KERNEL_DIR_INSIDE}/connection.json"))
        with open(self.dirs.log, "ab") as log:
            # setpriv drops to the sandbox uid (uvloop, which uvicorn uses, has no user=/group=)
            uid = str(sandbox.SANDBOX_UID)
            self.proc = await asyncio.create_subprocess_exec(
                shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv,
                env=sandbox.sandbox_env(), start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        self.client = AsyncKernelClient(context=_context())
        self.client.load_connection_info(connection)
        self.client.start_channels(hb=False)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    def _write_connection_files(self) -> dict[str, Any]:
        """The same key and socket names, as the kernel sees them and as the host does."""
        info = {**PORTS, "transport": "ipc", "key": secrets.token_hex(32), "signature_scheme": "hmac-sha256"}
        inside = {**info, "ip": f"{sandbox.KERNEL_DIR_INSIDE}/k"}
        path = self.dirs.kernel / "connection.json"
        path.write_text(json.dumps(inside))
        os.chown(path, sandbox.SANDBOX_UID, sandbox.SANDBOX_UID)
        path.chmod(0o400)
        host_ip = str(self.dirs.kernel / "k")
        if len(host_ip) + 2 > sandbox.SOCKET_PATH_MAX:
            raise ValueError(f"socket path {host_ip} is too long for a unix socket; use a shorter root")
        return {**info, "ip": host_ip}

    async def _wait_ready(self) -> None:
        assert self.client is not None
        ready = asyncio.ensure_future(self.client.wait_for_ready(timeout=START_SECONDS))
        died = asyncio.ensure_future(self._wait_exit())
        try:
            done, _ = await asyncio.wait({ready, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            died.cancel()
        if ready not in done or ready.cancelled() or ready.exception():
            raise KernelDied(f"the kernel did not start: {sandbox_tail(self.dirs.log)}")
        self.init_pid, self.kernel_pid = sandbox_pids(self.proc.pid if self.proc else 0)

    async def _wait_exit(self) -> None:
        if self.proc is not None:
            await self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> None:
        """Kill the sandbox (its pid namespace goes with it) and close the sockets."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self.client is not None:
            self.client.stop_channels()
            self.client.context.destroy(linger=0)
            self.client = None

    # ------------------------------------------------------------ calls

    async def submit(self, code: str) -> str:
        """Send the cell; returns its msg_id."""
        assert self.client is not None
        await self._drain_stale()
        self.strays_killed_for_memory = False
        msg_id: str = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        return msg_id

    async def _drain_stale(self) -> None:
        """Messages no call waited for (output of background threads, old replies)."""
        assert self.client is not None
        for get in (self.client.get_iopub_msg, self.client.get_shell_msg, self.client.get_control_msg):
            with contextlib.suppress(queue.Empty):
                for _ in range(10_000):
                    await get(timeout=0)

    async def collect(self, msg_id: str, sink: Sink) -> None:
        """Feed the call's output to `sink` until the kernel is idle again."""
        watchdog = asyncio.ensure_future(self._watch_memory())
        try:
            while True:
                msg = await self._next_iopub()
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    sink.error = sink.error or (not sink.stopping and await self._reply_status(msg_id) == "error")
                    return
                sink.add(msg["msg_type"], msg["content"])
        finally:
            watchdog.cancel()

    async def _reply_status(self, msg_id: str) -> str:
        """The execute_reply's status: it says "error" even when IPython failed to format one."""
        assert self.client is not None
        with contextlib.suppress(queue.Empty):
            while True:
                reply: Msg = await self.client.get_shell_msg(timeout=REPLY_SECONDS)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return str(reply["content"].get("status", ""))
        return ""

    async def _next_iopub(self) -> Msg:
        assert self.client is not None
        while True:
            try:
                msg: Msg = await self.client.get_iopub_msg(timeout=POLL_SECONDS)
                return msg
            except queue.Empty:
                if not self.alive:
                    raise KernelDied(self._death()) from None

    def _death(self) -> str:
        code = self.proc.returncode if self.proc else None
        return f"the Python session ended (exit status {code})"

    async def interrupt(self, msg_id: str, sink: Sink) -> bool:
        """Interrupt the running call; True if the kernel finished it within the grace
        period, else the kernel is killed (and False)."""
        assert self.client is not None
        sink.stopping = True
        self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))
        try:
            await asyncio.wait_for(self.collect(msg_id, sink), INTERRUPT_GRACE)
            return True
        except (asyncio.TimeoutError, KernelDied):
            await self.stop()
            return False

    # ------------------------------------------------------------ other processes

    def kill_strays(self) -> int:
        """Kill every process in the sandbox but its init and the kernel; returns how many."""
        if not self.alive:
            return 0
        return kill_all(lambda: self._strays())

    def _strays(self) -> list[int]:
        return [p for p in namespace_members(self.init_pid) if p not in (self.init_pid, self.kernel_pid)]

    async def _watch_memory(self) -> None:
        """RLIMIT_AS holds each process; this holds the sum when code starts several."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            strays = self._strays()
            if strays and sum(rss_bytes(p) for p in [self.kernel_pid, *strays]) > self.limits.memory_bytes:
                self.strays_killed_for_memory = True
                self.kill_strays()


def sandbox_tail(path: Path, chars: int = 300) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:].strip()
    return ""
