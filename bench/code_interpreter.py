"""code_interpreter sessions: what the sandbox costs, against a bare kernel in the same run.

`python -m bench.code_interpreter [--sessions N] [--calls N]` (as root, after scripts/test).

  start:   SessionPool.execute("1+1") on a fresh key (tmpfs mounted, bwrap, kernel ready,
           first call) vs a bare `ipykernel` started by the same Python without bwrap
           (TCP on loopback, kernel_info, the same first call), and `python -c pass`.
  call:    SessionPool.execute("pass") on a live session vs execute + idle on the bare kernel.
  memory:  PSS (/proc/pid/smaps_rollup) of an idle session's processes (bwrap ×2 + kernel)
           and of the bare kernel; plus the session tmpfs's own use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from assistd.execution.code_interpreter import SessionPool, sandbox_problem
from assistd.execution.code_interpreter.kernel import Kernel
from assistd.execution.code_interpreter.processes import namespace_members
from assistd.execution.code_interpreter.sandbox import default_python, sandbox_env
from bench.common import (
    DISTRIBUTION_HEADER,
    distribution_line,
    distribution_row,
    main,
    mib,
    ms,
    percentile,
    proc_status,
    report,
)


def rss_mib(pid: int) -> float:
    return mib(proc_status(pid), "VmRSS")


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def session_pids(kernel: Kernel) -> list[int]:
    outer = kernel.proc.pid if kernel.proc else 0
    return [outer, *namespace_members(kernel.init_pid)]


# ---------------------------------------------------------------- the bare kernel


class BareKernel:
    """ipykernel from the sandbox's Python, no bwrap, TCP on loopback: the baseline."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = AsyncKernelClient()

    async def start(self) -> None:
        conn, _ = write_connection_file(str(self.scratch / "bare.json"), ip="127.0.0.1")
        env = {**sandbox_env(), "HOME": str(self.scratch), "TMPDIR": str(self.scratch),
               "MPLCONFIGDIR": str(self.scratch / "mpl"), "IPYTHONDIR": str(self.scratch / "ipython")}
        python = str(default_python() / "bin" / "python")
        self.proc = subprocess.Popen([python,  # noqa: ASYNC220 - the baseline kernel, started once before timing "-m", "ipykernel_launcher", "-f", conn, "--HistoryManager.enabled=False",
                                      "--IPKernelApp.quiet=True"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.scratch, start_new_session=True)
        self.client.load_connection_info(json.loads(Path(conn).read_text()))  # noqa: ASYNC240 - a small local file, before timing
        self.client.start_channels(hb=False)
        await self.client.wait_for_ready(timeout=60)

    async def run(self, code: str) -> None:
        msg_id = self.client.execute(code)
        while True:
            msg: dict[str, Any] = await self.client.get_iopub_msg(timeout=30)
            if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"):
                await self.client.get_shell_msg(timeout=30)
                return

    def stop(self) -> None:
        self.client.stop_channels()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- measures


async def bare_figures(scratch: Path, sessions: int, calls: int) -> tuple[list[float], list[float], tuple[float, float]]:
    starts, per_call, pss = [], [], (0.0, 0.0)
    for i in range(sessions):
        bare = BareKernel(scratch)
        started = time.perf_counter()
        await bare.start()
        await bare.run("1+1")
        starts.append(time.perf_counter() - started)
        if i == 0:
            for _ in range(calls):
                started = time.perf_counter()
                await bare.run("pass")
                per_call.append(time.perf_counter() - started)
            await asyncio.sleep(0.5)
            pss = (pss_mib(bare.proc.pid), rss_mib(bare.proc.pid)) if bare.proc else (0.0, 0.0)
        bare.stop()
    return starts, per_call, pss


async def pool_figures(root: Path, sessions: int, calls: int) -> tuple[list[float], list[float], list[tuple[float, float]], float]:
    pool = SessionPool(root, max_sessions=sessions, idle_seconds=3600)
    try:
        starts, per_call = [], []
        for i in range(sessions):
            started = time.perf_counter()
            await pool.execute(f"thread-{i}", "1+1")
            starts.append(time.perf_counter() - started)
        for _ in range(calls):
            started = time.perf_counter()
            await pool.execute("thread-0", "pass")
            per_call.append(time.perf_counter() - started)
        await asyncio.sleep(0.5)
        pss = [(sum(pss_mib(p) for p in session_pids(s.kernel)), sum(rss_mib(p) for p in session_pids(s.kernel)))
               for s in pool.sessions.values() if s.kernel]
        used = os.statvfs(pool.sessions["thread-0"].dirs.top)
        tmpfs_mib = (used.f_blocks - used.f_bfree) * used.f_frsize / 2**20
        return starts, per_call, pss, tmpfs_mib
    finally:
        await pool.close()


def python_pass(n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return times


def run(sessions: int = 6, calls: int = 200) -> str:
    problem = sandbox_problem()
    if problem:
        return report("code_interpreter", [f"skipped: {problem}"], ["### code_interpreter sessions", "", f"Skipped: {problem}"])
    scratch = Path(tempfile.mkdtemp(prefix="ci-bench-", dir="/tmp"))
    scratch.chmod(0o711)  # the sandbox uid binds folders below it
    try:
        interpreter = python_pass(20)
        bare_start, bare_call, bare_pss = asyncio.run(bare_figures(scratch, sessions, calls))
        start, call, pss, tmpfs_mib = asyncio.run(pool_figures(scratch / "pool", sessions, calls))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _report(sessions, calls, interpreter, (bare_start, bare_call, bare_pss), (start, call, pss, tmpfs_mib))


def _ratio(a: list[float], b: list[float]) -> str:
    return f"{percentile(a, 0.5) / percentile(b, 0.5):.2f}×"


def _report(sessions: int, calls: int, interpreter: list[float],
            bare: tuple[list[float], list[float], tuple[float, float]],
            sandboxed: tuple[list[float], list[float], list[tuple[float, float]], float]) -> str:
    bare_start, bare_call, (bare_pss, bare_rss) = bare
    start, call, memory, tmpfs_mib = sandboxed
    mean_pss = sum(m[0] for m in memory) / len(memory)
    mean_rss = sum(m[1] for m in memory) / len(memory)
    pss = memory
    lines = [
        distribution_line("`python -c pass` (/usr/bin/python3)", interpreter),
        distribution_line("bare kernel start + first call", bare_start),
        distribution_line("sandboxed session start + first call", start),
        f"start ratio (p50, sandboxed / bare): {_ratio(start, bare_start)}",
        distribution_line("bare kernel `pass`", bare_call),
        distribution_line("sandboxed `pass` via SessionPool.execute", call),
        f"per-call ratio (p50): {_ratio(call, bare_call)}; overhead at p50 {ms(percentile(call, 0.5) - percentile(bare_call, 0.5))}",
        f"idle memory: sandboxed session PSS {mean_pss:.1f} MiB (mean of {len(pss)}; bwrap ×2 + kernel), "
        f"bare kernel PSS {bare_pss:.1f} MiB, ratio {mean_pss / bare_pss:.2f}×; RSS {mean_rss:.1f} vs {bare_rss:.1f} MiB "
        f"({mean_rss / bare_rss:.2f}×); session tmpfs in use {tmpfs_mib:.2f} MiB",
    ]
    markdown = [
        f"### code_interpreter sessions ({sessions} sessions started one after another, {calls} trivial calls)", "",
        "Baseline: the same `.venv-code` ipykernel started without bwrap (TCP on loopback), in the same run.", "",
        DISTRIBUTION_HEADER,
        distribution_row("`python -c pass` (/usr/bin/python3), for scale", interpreter),
        distribution_row("bare kernel: start → first `1+1` answered", bare_start),
        distribution_row("sandboxed session: `execute(new key, '1+1')`", start),
        distribution_row("bare kernel: `pass` → idle", bare_call),
        distribution_row("sandboxed: `execute(key, 'pass')`", call), "",
        f"**Start: {_ratio(start, bare_start)} the bare kernel's time; per call: {_ratio(call, bare_call)} "
        f"({ms(percentile(call, 0.5) - percentile(bare_call, 0.5))} more at p50).** "
        f"Idle memory: {mean_pss:.1f} MiB PSS per sandboxed session (bwrap ×2 + kernel, mean of {len(pss)}) vs "
        f"{bare_pss:.1f} MiB for the bare kernel ({mean_pss / bare_pss:.2f}×), plus {tmpfs_mib:.2f} MiB of its tmpfs; "
        f"RSS {mean_rss:.1f} vs {bare_rss:.1f} MiB ({mean_rss / bare_rss:.2f}×). The sessions' PSS is lower because "
        f"{len(pss)} live kernels share their library pages, which PSS divides among them; the bare kernel ran alone.",
    ]
    return report("code_interpreter sessions", lines, markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    main(lambda: run(args.sessions, args.calls))
