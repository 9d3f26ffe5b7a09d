"""What hostile code in the code_interpreter sandbox can take, driven through runs with the
official SDK: nothing writable outside the session's capped storage, files handed out bounded
(by apparent size) and streamed, no process outliving its call in a namespace of its own.
All skip when this host can't sandbox."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import openai
import pytest

from assistd.execution.code_interpreter import sandbox_problem
from tests.acceptance.test_code_interpreter import logs, run_code
from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import host_pids_ending_with

PROBLEM = sandbox_problem()
pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(PROBLEM is not None, reason=f"cannot sandbox here: {PROBLEM}")]
MIB = 1024 * 1024

WRITE_OUTSIDE_THE_SESSION = """
import os
for folder in ['/', '/etc', '/opt', '/run', '/usr', '/home', '/mnt', '/dev', '/proc']:
    try:
        with open(os.path.join(folder, 'big.bin'), 'wb') as f:
            f.write(b'x' * 4096)
        print('WROTE', folder)
    except OSError as exc:
        print('refused', folder, exc.errno)
for folder in ['/var', '/srv', '/etc/new', '/opt/python/new']:
    try:
        os.mkdir(folder)
        print('WROTE', folder)
    except OSError as exc:
        print('refused', folder, exc.errno)
try:  # RAM on no filesystem: memfd files and System V shared memory
    os.write(os.memfd_create('hidden'), b'x' * 4096)
    print('WROTE memfd')
except OSError as exc:
    print('refused memfd', exc.errno)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
segment = libc.shmget(0, 1 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
print('refused shmget', ctypes.get_errno()) if segment == -1 else print('WROTE shmget')
"""

FILL_EVERY_WRITABLE_FOLDER = """
written = {}
for folder in ['/mnt/data', '/tmp', '/dev/shm', '/home/sandbox']:
    written[folder] = 0
    try:
        with open(folder + '/fill', 'wb') as f:
            for _ in range(12):
                f.write(b'x' * (1 << 20))
                f.flush()
                written[folder] += 1
    except OSError:
        pass
print(sum(written.values()), 'MiB in all')
"""


def test_nothing_outside_the_sessions_capped_storage_is_writable(make_server: Any, upstream: FakeUpstream) -> None:
    srv = make_server(env={"ASSISTD_CODE_DISK_MB": "16"})
    with srv.client() as client:
        thread = client.beta.threads.create()
        _, outside = run_code(client, upstream, "write outside", WRITE_OUTSIDE_THE_SESSION, thread_id=thread.id)
        _, filled = run_code(client, upstream, "fill everything", FILL_EVERY_WRITABLE_FOLDER, thread_id=thread.id)
    assert "WROTE" not in logs(outside) and logs(outside).count("refused") == 15
    assert int(logs(filled).split()[0]) < 16  # the four writable folders share one 16 MiB tmpfs


SPARSE_FILES = """
open('/mnt/data/small.txt', 'w').write('kept')
for i in range(4):
    with open(f'/mnt/data/sparse{i}.bin', 'wb') as f:
        f.truncate(24 << 20)  # costs the sandbox nothing
"""


def peak_rss(pid: int) -> int:
    """VmHWM of a process: the most memory it has held so far."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_sparse_files_hand_out_at_most_the_disk_limit_streamed_and_the_rest_named(
        make_server: Any, upstream: FakeUpstream) -> None:
    srv = make_server(env={"ASSISTD_CODE_DISK_MB": "32"})
    with srv.client() as client:
        thread = client.beta.threads.create()
        run_code(client, upstream, "warm up", "print('ready')", thread_id=thread.id)
        before = peak_rss(srv.pid)
        run, call = run_code(client, upstream, "write sparse files", SPARSE_FILES, thread_id=thread.id)
        grown = peak_rss(srv.pid) - before
        outputs = client.files.list(purpose="assistants_output").data
        sizes = {f.filename: f.bytes for f in outputs}
        content = client.files.content(next(f.id for f in outputs if f.filename == "sparse0.bin")).read()
    print(f"assistd's peak RSS grew by {grown / MIB:.1f} MiB handing out a 24 MiB file")
    assert run.status == "completed"
    assert sizes == {"small.txt": 4, "sparse0.bin": 24 * MIB}  # within 32 MiB, by apparent size
    assert content == b"\0" * (24 * MIB)
    assert ("[files not handed out: /mnt/data/sparse1.bin (24.0 MiB), /mnt/data/sparse2.bin (24.0 MiB), "
            "/mnt/data/sparse3.bin (24.0 MiB); one call hands out at most 100 files of 32 MiB together]") in logs(call)
    assert grown < 16 * MIB  # streamed: never the whole 24 MiB in memory


def test_a_smaller_files_out_limit_applies(make_server: Any, upstream: FakeUpstream) -> None:
    srv = make_server(env={"ASSISTD_CODE_DISK_MB": "32", "ASSISTD_CODE_FILES_OUT_MB": "1"})
    with srv.client() as client:
        _, call = run_code(client, upstream, "write sparse files", SPARSE_FILES)
        names = [f.filename for f in client.files.list(purpose="assistants_output").data]
    assert names == ["small.txt"]
    assert "/mnt/data/sparse0.bin (24.0 MiB)" in logs(call) and "of 1 MiB together" in logs(call)


NESTED_NAMESPACES = """
import subprocess
for argv in (['unshare', '--user', '--pid', '--fork', 'sleep', '4242.5'],
             ['unshare', '--user', '--map-root-user', '--pid', '--fork', '--mount-proc', 'sleep', '4242.5'],
             ['unshare', '--pid', '--fork', 'sleep', '4242.5']):
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        child.wait(timeout=3)
        print('refused:', child.stderr.read().strip())
    except subprocess.TimeoutExpired:
        print('NESTED namespace running')
"""


def test_processes_in_nested_namespaces_do_not_outlive_their_call(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    try:
        run, call = run_code(client, upstream, "hide a process", NESTED_NAMESPACES)
        left = host_pids_ending_with("4242.5")
    finally:
        for pid in host_pids_ending_with("4242.5"):  # whatever happened, leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert run.status == "completed"
    assert left == [], f"alive after the call: {left}; logs: {logs(call)}"
    assert "NESTED" not in logs(call) and logs(call).count("refused:") == 3
