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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import KernelConnectionInfo

from assistd.execution.code_interpreter import sandbox
from assistd.execution.code_interpreter.limits import Limits
from assistd.execution.code_interpreter.outputs import Sink
from assistd.execution.code_interpreter.processes import (
    children_in_tasks,
    kill_all,
    namespace_members,
    rss_bytes,
    sandbox_pids,
)

Msg = dict[str, Any]
START_SECONDS = 60.0
BETWEEN_CALLS_CHECK = 1.0  # how often, with no call running, the sandbox is checked for processes
POLL_SECONDS = 0.25  # how often a waiting call checks that the kernel is still alive
REPLY_SECONDS = 2.0  # the execute_reply comes with the idle status; don't wait forever
REPLY_GRACE = 1.0  # after a call's execute_reply, how long its idle status may still take
INTERRUPT_GRACE = 1.0  # after an interrupt, how long the kernel has to finish the call
# What assistd may hold of one session's output at a time: a message over MAX_MESSAGE_BYTES
# resets the connection (it is lost), and at most QUEUED_MESSAGES wait to be read. The
# launcher cuts the kernel's own stream messages to well under it.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
QUEUED_MESSAGES = 2
PORTS: KernelConnectionInfo = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


class KernelDied(Exception):
    """The kernel process ended (killed, crashed, over a limit) while it was needed."""


def _context() -> zmq.asyncio.Context:
    context = zmq.asyncio.Context()
    context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    context.setsockopt(zmq.RCVHWM, QUEUED_MESSAGES)
    context.setsockopt(zmq.LINGER, 0)
    return context


@dataclass
class Call:
    """The cell being run: its output goes to `sink` until its idle status comes."""

    msg_id: str
    sink: Sink
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    reply: str | None = None  # the execute_reply's status, once read


class Kernel:
    """A started kernel. `submit` a cell, `collect` its messages, `interrupt` it, `stop` it."""

    def __init__(self, dirs: sandbox.SessionDirs, python: Path, limits: Limits) -> None:
        self.dirs, self.python, self.limits = dirs, python, limits
        self.proc: asyncio.subprocess.Process | None = None
        self.client: AsyncKernelClient | None = None
        self.init_pid = self.kernel_pid = 0
        self.strays_killed_for_memory = False
        self.call: Call | None = None
        self.between = Sink(limits.output_chars, keep_images=False)  # printed while no call ran
        self.pump: asyncio.Future[None] | None = None
        self.police: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Start the sandbox and wait until the kernel answers kernel_info."""
        connection = self._write_connection_files()
        command = sandbox.kernel_command(self.limits, f"{sandbox.KERNEL_DIR_INSIDE}/connection.json")
        # the log file is local and opened once, for the child's output: nothing to wait for
        with open(self.dirs.log, "ab") as log, sandbox.seccomp_filter() as seccomp_fd:  # noqa: ASYNC230
            argv = sandbox.bwrap_argv(self.python, self.dirs.binds, command, seccomp_fd)
            # setpriv drops to the sandbox uid (uvloop, which uvicorn uses, has no user=/group=)
            uid = str(sandbox.SANDBOX_UID)
            self.proc = await asyncio.create_subprocess_exec(
                shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv,
                env=sandbox.sandbox_env(), start_new_session=True, pass_fds=() if seccomp_fd is None else (seccomp_fd,),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        self.client = AsyncKernelClient(context=_context())
        self.client.load_connection_info(connection)
        self.client.start_channels(hb=False)
        try:
            await self._wait_ready()
            self.pump = asyncio.ensure_future(self._pump_iopub())
            self.police = asyncio.ensure_future(self._police_between_calls())
        except BaseException:
            await self.stop()
            raise

    def _write_connection_files(self) -> KernelConnectionInfo:
        """The same key and socket names, as the kernel sees them and as the host does."""
        info: KernelConnectionInfo = {**PORTS, "transport": "ipc", "key": secrets.token_hex(32), "signature_scheme": "hmac-sha256"}
        inside: KernelConnectionInfo = {**info, "ip": f"{sandbox.KERNEL_DIR_INSIDE}/k"}
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
        for task in (self.pump, self.police):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
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

    async def submit(self, code: str, sink: Sink) -> str:
        """Send the cell, its output going to `sink` (after what was printed since the last
        call); returns its msg_id."""
        assert self.client is not None
        await self._drain_stale()
        self.strays_killed_for_memory = False
        sink.absorb(self.between)
        self.between = Sink(self.limits.output_chars, keep_images=False)
        msg_id: str = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        self.call = Call(msg_id, sink)  # before the pump can read its first message: execute() doesn't await
        return msg_id

    async def _drain_stale(self) -> None:
        """Replies no call waited for (iopub is read all the time by the pump)."""
        assert self.client is not None
        for get in (self.client.get_shell_msg, self.client.get_control_msg):
            with contextlib.suppress(queue.Empty):
                for _ in range(10_000):
                    await get(timeout=0)

    async def _pump_iopub(self) -> None:
        """Read the kernel's output as it comes, during calls and between them, so it never
        piles up in assistd: what no call waits for goes to `between`, which keeps only
        output_chars of it and counts the rest."""
        assert self.client is not None
        while True:
            try:
                self._route(await self.client.get_iopub_msg())
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the code holds the key: it can send anything, signed or not

    def _route(self, msg: Msg) -> None:
        call = self.call
        if call is None or msg["parent_header"].get("msg_id") != call.msg_id:
            self.between.add(msg["msg_type"], msg["content"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            call.idle.set()
        else:
            call.sink.add(msg["msg_type"], msg["content"])

    async def collect(self, msg_id: str, sink: Sink) -> None:
        """Feed the call's output to `sink` until the kernel is idle again."""
        call = self.call
        if call is None or call.msg_id != msg_id:
            return  # it was over already
        call.sink = sink
        watchdog = asyncio.ensure_future(self._watch_memory())
        try:
            await self._until_idle(call)
            self.call = None  # what its threads print from now on is between calls
            status = call.reply if call.reply is not None else await self._reply_status(msg_id)
            sink.error = sink.error or (not sink.stopping and status == "error")
        finally:
            watchdog.cancel()

    async def _until_idle(self, call: Call) -> None:
        """Until the call's idle status (all its output is in), or REPLY_GRACE after its
        execute_reply: the kernel's iopub queue drops messages in a flood, the status too."""
        since_reply = 0.0
        while not call.idle.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(call.idle.wait(), POLL_SECONDS)
            if call.idle.is_set():
                return
            if not self.alive:
                raise KernelDied(self._death())
            if call.reply is None:
                call.reply = await self._reply_if_any(call.msg_id)
            elif (since_reply := since_reply + POLL_SECONDS) >= REPLY_GRACE:
                return

    async def _reply_if_any(self, msg_id: str) -> str | None:
        """The call's execute_reply status if it has come (other replies are stale: dropped)."""
        assert self.client is not None
        with contextlib.suppress(queue.Empty):
            while True:
                reply: Msg = await self.client.get_shell_msg(timeout=0)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return str(reply["content"].get("status", ""))
        return None

    async def _reply_status(self, msg_id: str) -> str:
        """The execute_reply's status: it says "error" even when IPython failed to format one."""
        assert self.client is not None
        with contextlib.suppress(queue.Empty):
            while True:
                reply: Msg = await self.client.get_shell_msg(timeout=REPLY_SECONDS)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return str(reply["content"].get("status", ""))
        return ""

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
        except (TimeoutError, KernelDied):
            await self.stop()
            return False

    # ------------------------------------------------------------ other processes

    def kill_strays(self) -> int:
        """Kill every process in the sandbox but its init and the kernel; returns how many."""
        if not self.alive:
            return 0
        return kill_all(self._strays)

    def _strays(self) -> list[int]:
        return [p for p in namespace_members(self.init_pid) if p not in (self.init_pid, self.kernel_pid)]

    async def _police_between_calls(self) -> None:
        """No process outlives its call, also one a background thread starts after the call
        returned: with no call running, any process but the kernel is killed within a second."""
        while True:
            await asyncio.sleep(BETWEEN_CALLS_CHECK)
            if self.call is None and self.alive and await asyncio.to_thread(self._has_children):
                await asyncio.to_thread(kill_all, lambda: [] if self.call is not None else self._strays())

    def _has_children(self) -> bool:
        return bool(children_in_tasks(self.kernel_pid)) or children_in_tasks(self.init_pid) != [self.kernel_pid]

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
