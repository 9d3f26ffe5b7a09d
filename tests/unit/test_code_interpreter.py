"""The code_interpreter core: real sandboxed IPython kernels, their limits, and the attacks
they must contain. Every test starts real kernels in bubblewrap; they all skip (saying why)
only when this host cannot sandbox."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from assistd.execution.code_interpreter import Limits, Output, SessionPool, sandbox_problem
from assistd.execution.code_interpreter.processes import namespace_members
from tests.support.processes import host_pids_ending_with

PROBLEM = sandbox_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"cannot sandbox here: {PROBLEM}")
REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
SMALL = Limits(call_seconds=4, disk_bytes=32 * MIB, memory_bytes=768 * MIB, processes=48)
T = TypeVar("T")


@pytest.fixture
def root() -> Iterator[Path]:
    """A short folder (unix socket paths live under it)."""
    path = Path(tempfile.mkdtemp(prefix="ci-", dir="/tmp"))
    path.chmod(0o711)  # the sandbox uid binds folders below it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def with_pool(root: Path, scenario: Callable[[SessionPool], Awaitable[T]], **options: Any) -> T:
    async def run() -> T:
        pool = SessionPool(root, max_sessions=options.pop("max_sessions", 4),
                           idle_seconds=options.pop("idle_seconds", 3600), limits=options.pop("limits", SMALL))
        try:
            return await scenario(pool)
        finally:
            await pool.close()
    return asyncio.run(run())


def ok(output: Output) -> str:
    assert not output.error and not output.timed_out, output.logs
    return output.logs


# ---------------------------------------------------------------- what the model relies on


def test_a_statement_computes_and_print_is_in_the_logs(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[Output, Output]:
        return await pool.execute("t1", "1+1"), await pool.execute("t1", "print('hello', 6 * 7)")

    value, printed = with_pool(root, scenario)
    assert ok(value) == "2\n"
    assert ok(printed) == "hello 42\n"
    assert not value.restarted and not value.images and not value.files


def test_variables_persist_between_two_calls_of_a_key(root: Path) -> None:
    async def scenario(pool: SessionPool) -> Output:
        ok(await pool.execute("t1", "import pandas as pd\nframe = pd.DataFrame({'a': [1, 2, 3]})"))
        return await pool.execute("t1", "print(frame['a'].sum())")

    assert ok(with_pool(root, scenario)) == "6\n"


def test_a_file_passed_in_is_readable_by_its_original_name_under_mnt_data(root: Path) -> None:
    upload = root / "file-abc123"
    upload.write_text("x,y\n1,2\n3,4\n")

    async def scenario(pool: SessionPool) -> Output:
        code = "import pandas as pd\nprint(pd.read_csv('/mnt/data/sales.csv')['y'].sum())"
        return await pool.execute("t1", code, [("sales.csv", upload)])

    output = with_pool(root, scenario)
    assert ok(output) == "6\n"
    assert output.files == []  # passed in, not created by the call
    assert upload.read_text() == "x,y\n1,2\n3,4\n"


def test_a_file_written_to_mnt_data_comes_back_as_a_host_copy(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[Output, Output, list[str]]:
        first = await pool.execute("t1", "import os\nos.makedirs('/mnt/data/out', exist_ok=True)\n"
                                         "open('/mnt/data/out/report.txt', 'w').write('done')\n"
                                         "os.symlink('/etc/hostname', '/mnt/data/link')")
        contents = [p.read_text() for p in first.files]
        second = await pool.execute("t1", "open('/mnt/data/untouched.txt', 'w').write('x')")
        return first, second, contents

    first, second, contents = with_pool(root, scenario)
    ok(first)
    assert [p.name for p in first.files] == ["report.txt"] and contents == ["done"]  # the symlink is not reported
    assert [p.name for p in second.files] == ["untouched.txt"]  # only what this call changed


def test_a_matplotlib_chart_comes_back_as_a_png_image(root: Path) -> None:
    async def scenario(pool: SessionPool) -> Output:
        return await pool.execute("t1", "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()")

    # importing matplotlib alone took over 4 s once, with the whole suite on a slow machine
    output = with_pool(root, scenario, limits=dataclasses.replace(SMALL, call_seconds=30))
    ok(output)
    assert len(output.images) == 1 and output.images[0].startswith(b"\x89PNG\r\n\x1a\n")


def test_an_exception_is_an_output_with_error_not_a_crash(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[Output, Output]:
        return await pool.execute("t1", "x = 1\n1 / 0"), await pool.execute("t1", "x")

    failed, after = with_pool(root, scenario)
    assert failed.error and "ZeroDivisionError" in failed.logs and "\x1b[" not in failed.logs
    assert ok(after) == "1\n"


def test_output_beyond_output_chars_is_cut_saying_so(root: Path) -> None:
    async def scenario(pool: SessionPool) -> Output:
        return await pool.execute("t1", "print('y' * 50_000)")

    output = with_pool(root, scenario, limits=Limits(output_chars=1000))
    assert output.logs.startswith("y" * 1000) and output.logs.count("y") == 1000
    assert "truncated: 49001 more characters" in output.logs


def test_cancelling_the_awaiting_task_interrupts_a_busy_loop_and_the_session_survives(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[float, Output]:
        ok(await pool.execute("t1", "kept = 'yes'"))
        task = asyncio.create_task(pool.execute("t1", "while True:\n    pass"))
        await asyncio.sleep(1.0)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started, await pool.execute("t1", "print(kept)")

    took, after = with_pool(root, scenario)
    print(f"cancel → CancelledError re-raised after {took * 1000:.0f} ms")
    assert ok(after) == "yes\n" and not after.restarted


async def _until_exists(root: Path, pattern: str, timeout: float = 30.0) -> None:
    """Until a file the kernel's code writes shows up: polled, the filesystem has no event to wait on."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(lambda: any(root.glob(pattern))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {pattern} under {root} after {timeout:.0f} s")
        await asyncio.sleep(0.05)


def test_a_cancelled_call_returns_at_once_and_the_next_call_waits_for_the_interrupt_to_finish(root: Path) -> None:
    code = ("import time\nopen('/mnt/data/started', 'w').close()\ntry:\n    time.sleep(60)\n"
            "except KeyboardInterrupt:\n    time.sleep(0.5)\n    state = 'interrupted and cleaned up'\n")

    async def scenario(pool: SessionPool) -> tuple[bool, Output]:
        task = asyncio.create_task(pool.execute("t1", code))
        await _until_exists(pool.root, "sessions/*/data/started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cleanup = pool.sessions["t1"].cleanup
        still_interrupting = cleanup is not None and not cleanup.done()
        return still_interrupting, await pool.execute("t1", "print(state)")

    still_interrupting, after = with_pool(root, scenario)
    assert still_interrupting  # the caller did not wait for the kernel's handler
    assert ok(after) == "interrupted and cleaned up\n" and not after.restarted


def test_a_call_past_the_wall_clock_limit_returns_timed_out(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[Output, Output]:
        slow = await pool.execute("t1", "import time\nprint('started')\ntime.sleep(30)")
        return slow, await pool.execute("t1", "print('next')")

    slow, after = with_pool(root, scenario, limits=Limits(call_seconds=1.5))
    assert slow.timed_out and "started" in slow.logs and "exceeded its 1.5 s time limit" in slow.logs
    assert "KeyboardInterrupt" not in slow.logs
    assert ok(after) == "next\n"


def test_a_killed_kernel_is_restarted_and_the_next_call_says_so(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[Output, Output]:
        ok(await pool.execute("t1", "x = 1\nopen('/mnt/data/kept.txt', 'w').write('k')"))
        died = await pool.execute("t1", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        return died, await pool.execute("t1", "print(open('/mnt/data/kept.txt').read())\nx")

    died, after = with_pool(root, scenario)
    assert died.error and not died.restarted and "ended" in died.logs
    assert after.restarted and after.error and "NameError" in after.logs
    assert "k\n" in after.logs  # files in /mnt/data survive the restart


def test_an_idle_session_is_stopped_after_idle_seconds(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[int, Output]:
        ok(await pool.execute("t1", "x = 1"))
        await asyncio.sleep(1.5)
        live = len(pool.sessions)
        return live, await pool.execute("t1", "x")

    live, after = with_pool(root, scenario, idle_seconds=0.5)
    assert live == 0
    assert after.restarted and "NameError" in after.logs and "unused for over 0.5 s" in after.logs


def test_the_least_recently_used_idle_session_is_evicted_for_a_new_key(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[list[str], Output, Output]:
        ok(await pool.execute("a", "x = 'a'"))
        ok(await pool.execute("b", "x = 'b'"))
        ok(await pool.execute("a", "x"))  # now b is the least recently used
        ok(await pool.execute("c", "x = 'c'"))
        live = list(pool.sessions)
        return live, await pool.execute("a", "print(x)"), await pool.execute("b", "x")

    live, a, b = with_pool(root, scenario, max_sessions=2)
    assert live == ["a", "c"]
    assert ok(a) == "a\n" and not a.restarted
    assert b.restarted and "NameError" in b.logs and "needed room" in b.logs


# ---------------------------------------------------------------- what the sandbox must contain


def test_the_sandbox_has_no_network_not_even_to_host_services(root: Path) -> None:
    code = """
import socket
for address in [("127.0.0.1", 5432), ("1.1.1.1", 53), ("10.0.2.2", 80)]:
    try:
        socket.create_connection(address, timeout=2).close()
        print("CONNECTED", address)
    except OSError as exc:
        print("refused", address, exc.errno)
try:
    socket.getaddrinfo("pypi.org", 443)
    print("RESOLVED")
except OSError:
    print("no dns")
print(sorted(name for _, name in socket.if_nameindex()))
"""

    async def scenario(pool: SessionPool) -> Output:
        return await pool.execute("t1", code)

    logs = ok(with_pool(root, scenario))
    assert "CONNECTED" not in logs and "RESOLVED" not in logs and "no dns" in logs
    assert logs.count("refused") == 3 and "['lo']" in logs


def test_host_secrets_like_etc_shadow_are_not_visible(root: Path) -> None:
    async def scenario(pool: SessionPool) -> Output:
        return await pool.execute("t1", "import os\nprint(sorted(os.listdir('/etc')))\nopen('/etc/shadow').read()")

    output = with_pool(root, scenario)
    assert output.error and "FileNotFoundError" in output.logs and "shadow" not in output.logs.split("\n")[0]


def test_the_repository_work_dir_home_and_data_dir_are_not_visible(root: Path) -> None:
    paths = [str(REPO), str(REPO / "src"), "/work", "/root", "/var/lib/postgresql", str(root), "/home/sandbox/../../work"]
    code = f"import os\nprint([os.path.exists(p) for p in {paths!r}])\nprint(sorted(os.listdir('/')))"

    async def scenario(pool: SessionPool) -> Output:
        return await pool.execute("t1", code)

    logs = ok(with_pool(root, scenario))
    assert logs.splitlines()[0] == str([False] * len(paths))
    # the /lib* links are those the host has (lib32 and libx32 come with some packages)
    seen = set(ast.literal_eval(logs.splitlines()[1]))
    assert {"bin", "dev", "etc", "home", "lib", "mnt", "opt", "proc", "run", "sbin", "tmp", "usr"} <= seen
    assert seen <= {"bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "mnt", "opt", "proc",
                    "run", "sbin", "tmp", "usr"}


def test_one_session_cannot_reach_another_sessions_folder(root: Path) -> None:
    async def scenario(pool: SessionPool) -> Output:
        ok(await pool.execute("a", "open('/mnt/data/private.txt', 'w').write('secret')"))
        other = pool.sessions["a"].dirs.data / "private.txt"
        assert other.read_text() == "secret"
        return await pool.execute("b", f"import os\nprint(os.path.exists({str(other)!r}))\n"
                                       f"print(os.listdir('/mnt/data'))\nopen({str(other)!r}).read()")

    output = with_pool(root, scenario)
    assert output.error and output.logs.startswith("False\n[]\n") and "FileNotFoundError" in output.logs


def test_two_keys_do_not_see_each_others_variables_or_files(root: Path) -> None:
    async def scenario(pool: SessionPool) -> Output:
        ok(await pool.execute("a", "secret = 42\nopen('/mnt/data/a.txt', 'w').write('a')"))
        return await pool.execute("b", "import os\nprint(os.listdir('/mnt/data'), os.listdir('/tmp'))\nsecret")

    output = with_pool(root, scenario)
    assert output.error and output.logs.startswith("[] []\n") and "NameError" in output.logs


def test_a_fork_bomb_is_contained_and_the_host_stays_responsive(root: Path) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"

    async def scenario(pool: SessionPool) -> tuple[Output, list[float], int, Output]:
        ok(await pool.execute("t1", "x = 1"))
        kernel = pool.sessions["t1"].kernel
        assert kernel is not None
        call = asyncio.create_task(pool.execute("t1", bomb))
        host_runs, most = [], 0
        while not call.done():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec("true")
            assert await proc.wait() == 0
            host_runs.append(time.monotonic() - started)
            most = max(most, len(namespace_members(kernel.init_pid)))
            await asyncio.sleep(0.2)
        return call.result(), host_runs, most, await pool.execute("t1", "print('alive')")

    bombed, host_runs, most, after = with_pool(root, scenario)
    print(f"host `true` during the bomb: max {max(host_runs) * 1000:.0f} ms over {len(host_runs)} runs; "
          f"at most {most} processes in the sandbox")
    assert bombed.timed_out
    assert 1 < most <= SMALL.processes
    assert "alive\n" in after.logs and not after.error


def test_a_memory_bomb_is_contained(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[Output, Output, Output]:
        huge = await pool.execute("t1", "x = bytearray(8 * 1024 ** 3)")
        growing = await pool.execute("t1", "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 ** 2))")
        return huge, growing, await pool.execute("t1", "print(len(blocks) * 64, 'MiB')\ndel blocks")

    huge, growing, after = with_pool(root, scenario)
    assert huge.error and "MemoryError" in huge.logs
    assert growing.error and "MemoryError" in growing.logs
    assert int(ok(after).split()[0]) < SMALL.memory_bytes // MIB


def test_a_disk_filling_loop_is_contained_to_the_session(root: Path) -> None:
    fill = "with open('/mnt/data/fill', 'wb') as f:\n    while True:\n        f.write(b'x' * 1024 * 1024)"
    many = "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'w').close()\n    i += 1"

    async def scenario(pool: SessionPool) -> tuple[Output, Output, os.statvfs_result, list[tuple[str, int]]]:
        big = await pool.execute("t1", fill)
        files = await pool.execute("t1", many)
        data = pool.sessions["t1"].dirs.data
        return big, files, os.statvfs(data), [(p.name, p.stat().st_size) for p in data.iterdir()]

    big, files, space, content = with_pool(root, scenario)
    assert big.error and "No space left on device" in big.logs
    assert files.error and "No space left on device" in files.logs
    assert space.f_blocks * space.f_frsize == SMALL.disk_bytes  # /mnt/data is the session's own tmpfs
    assert len(content) == 1 and content[0][0] == "fill" and 0 < content[0][1] <= SMALL.disk_bytes
    assert [p.name for p in big.files] == ["fill"]


def test_an_infinite_loop_that_swallows_interrupts_is_stopped_by_the_wall_clock(root: Path) -> None:
    stubborn = "while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n        pass"

    async def scenario(pool: SessionPool) -> tuple[float, Output, Output]:
        started = time.monotonic()
        stopped = await pool.execute("t1", stubborn)
        return time.monotonic() - started, stopped, await pool.execute("t1", "print('again')")

    took, stopped, after = with_pool(root, scenario, limits=Limits(call_seconds=2))
    assert stopped.timed_out and took < 30
    assert after.restarted and "again\n" in after.logs


def test_memory_spread_over_several_processes_is_contained(root: Path) -> None:
    spread = """
import os, time
for _ in range(4):
    if os.fork() == 0:
        block = bytearray(400 * 1024 ** 2)  # under RLIMIT_AS each; 1.6 GB together
        time.sleep(60)
        os._exit(0)
time.sleep(3)
print('parent still here')
"""

    async def scenario(pool: SessionPool) -> tuple[Output, Output]:
        return await pool.execute("t1", spread), await pool.execute("t1", "print('fine')")

    output, after = with_pool(root, scenario, limits=Limits(call_seconds=8, memory_bytes=768 * MIB))
    assert "parent still here" in output.logs and "together they used more than 768 MiB" in output.logs
    assert ok(after) == "fine\n"


# ---------------------------------------------------------------- what assistd itself must not hold


def rss_of_this_process() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


FLOOD = """
import sys, threading
def flood():
    chunk = 'x' * (20 * 1024 * 1024)
    for _ in range(15):  # 300 MiB in all, after the call has returned
        sys.stdout.write(chunk)
        sys.stdout.flush()
    open('/mnt/data/flood-done', 'w').close()
threading.Thread(target=flood, daemon=True).start()
"""


def test_output_flooded_between_calls_is_read_as_it_comes_and_only_output_chars_kept(root: Path) -> None:
    async def scenario(pool: SessionPool) -> tuple[int, int, Output]:
        ok(await pool.execute("t1", "print('warm')"))
        before = peak = rss_of_this_process()
        ok(await pool.execute("t1", FLOOD))
        done = pool.sessions["t1"].dirs.data / "flood-done"
        for _ in range(1800):  # the flood ends by itself; this only bounds a broken one
            peak = max(peak, rss_of_this_process())
            if done.exists():
                break
            await asyncio.sleep(0.05)
        for _ in range(200):  # its last messages are read too (on a busy machine, seconds after the file)
            peak = max(peak, rss_of_this_process())
            await asyncio.sleep(0.05)
        return before, peak, await pool.execute("t1", "print('after')")

    before, peak, after = with_pool(root, scenario, limits=Limits(output_chars=1000, memory_bytes=768 * MIB))
    print(f"assistd's RSS grew by {(peak - before) / MIB:.0f} MiB while the kernel printed 300 MiB between calls")
    assert peak - before < 48 * MIB
    assert after.logs.startswith("[printed by the code since its last call returned:]\n" + "x" * 1000)
    assert "more characters printed since its last call not shown]\n[this call:]\nafter\n" in after.logs


def test_a_process_started_by_a_background_thread_after_its_call_does_not_live_on(root: Path) -> None:
    late = ("import subprocess, threading, time\n"
            "def later():\n    time.sleep(1)\n    subprocess.Popen(['sleep', '4243.5'])\n"
            "    open('/mnt/data/started', 'w').close()\n"
            "threading.Thread(target=later, daemon=True).start()")

    async def scenario(pool: SessionPool) -> tuple[bool, list[int]]:
        ok(await pool.execute("t1", late))
        started = pool.sessions["t1"].dirs.data / "started"
        for _ in range(200):  # bounds a thread that never starts it
            if started.exists():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(3)  # the check runs every second
        return started.exists(), host_pids_ending_with("4243.5")

    try:
        started, left = with_pool(root, scenario)
    finally:
        for pid in host_pids_ending_with("4243.5"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    assert started and left == []


def test_a_call_whose_idle_status_is_lost_ends_with_its_reply_not_its_time_limit(root: Path) -> None:
    # as when the kernel's iopub queue drops messages in a flood: here it never sends "idle"
    lose_idle = ("kernel = get_ipython().kernel\npublish = kernel._publish_status\n"
                 "kernel._publish_status = lambda status, *a, **kw: None if status == 'idle' else publish(status, *a, **kw)\n"
                 "print('no idle from now on')")

    async def scenario(pool: SessionPool) -> tuple[Output, Output]:
        return await pool.execute("t1", lose_idle), await pool.execute("t1", "1 / 0")

    quiet, failing = with_pool(root, scenario, limits=Limits(call_seconds=20))
    assert not quiet.timed_out and ok(quiet) == "no idle from now on\n"
    assert not failing.timed_out and failing.error and "ZeroDivisionError" in failing.logs
