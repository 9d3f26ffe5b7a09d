"""The bubblewrap sandbox a session's kernel runs in, and whether this host can build one.

Each session gets one size-limited tmpfs on the host (`<root>/sessions/<id>`, mounted by
assistd, which therefore runs as root); its subfolders are bound into the sandbox as
/mnt/data, /tmp, /dev/shm, $HOME and /run/kernel (the kernel's ZMQ unix sockets). The kernel
runs under an unprivileged uid of its own inside new user, pid, net, ipc, uts, mount and cgroup
namespaces (and can make no nested ones); the only other things it sees are /usr (and the
/lib, /bin links) and the sandbox Python, read-only. bwrap's own root is read-only too, and a
seccomp filter refuses memory that lives on no filesystem (seccomp.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from assistd.config import load_settings
from assistd.execution.code_interpreter import seccomp
from assistd.execution.code_interpreter.limits import Limits

# Host uid of every kernel (ASSISTD_CODE_UID), read alone: a bad unrelated setting must not stop
# the setup-sandbox command, which reads no others.
SANDBOX_UID = load_settings(only=("code_uid",)).code_uid
INNER_UID = 1000  # the same uid as the kernel sees it
PYTHON_INSIDE = "/opt/python"
HOME_INSIDE = "/home/sandbox"
KERNEL_DIR_INSIDE = "/run/kernel"
DATA_INSIDE = "/mnt/data"
SYSTEM_DIRS = ("/usr",)
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
READ_ONLY_EXTRAS = ("/etc/fonts",)  # fontconfig's settings, so matplotlib's fc-list is quiet
LAUNCHER = (Path(__file__).with_name("launcher.py")).read_text()
SOCKET_PATH_MAX = 107  # sun_path, minus its terminating NUL

_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2


@dataclass(frozen=True)
class SessionDirs:
    """Host folders of one session: everything writable in the sandbox lives on `top` (a tmpfs)."""

    top: Path

    @property
    def binds(self) -> dict[str, Path]:
        """Sandbox path → host folder."""
        return {DATA_INSIDE: self.top / "data", "/tmp": self.top / "tmp", "/dev/shm": self.top / "shm",
                HOME_INSIDE: self.top / "home", KERNEL_DIR_INSIDE: self.top / "kernel"}

    @property
    def data(self) -> Path:
        return self.top / "data"

    @property
    def kernel(self) -> Path:
        return self.top / "kernel"

    @property
    def log(self) -> Path:
        return self.top / "kernel.log"  # not bound: the kernel's startup chatter, for us


def default_python() -> Path:
    """The environment (a venv or a prefix) the kernels run: ASSISTD_CODE_PYTHON, else a
    `.venv-code` beside assistd's own venv (what scripts/test builds), else assistd's own."""
    if (configured := load_settings(only=("code_python",)).code_python) is not None:
        return configured
    sibling = Path(sys.prefix).with_name(".venv-code")
    return sibling if sibling.is_dir() else Path(sys.prefix)


# ---------------------------------------------------------------- the tmpfs


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(target: Path, size_bytes: int) -> None:
    """A size- and inode-limited tmpfs, owned by root and traversable (0711)."""
    target.mkdir(parents=True, exist_ok=True)
    inodes = max(1024, size_bytes // 16384)  # a loop of empty files fills up too
    options = f"size={size_bytes},nr_inodes={inodes},mode=0711".encode()
    if _libc().mount(b"tmpfs", str(target).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount tmpfs on {target}: {os.strerror(errno)}")


def unmount(target: Path) -> None:
    """Detach the mount at `target` (lazily, if something still holds it)."""
    _libc().umount2(str(target).encode(), _MNT_DETACH)


def mounts_under(root: Path) -> list[Path]:
    """Mount points below `root`, deepest first (leftovers of an assistd that died)."""
    prefix = str(root.resolve()) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((Path(p) for p in points if p.startswith(prefix)), key=lambda p: -len(p.parts))


def prepare_session(dirs: SessionDirs, limits: Limits) -> None:
    """Mount the session's tmpfs and make its folders, owned by the sandbox uid."""
    mount_tmpfs(dirs.top, limits.disk_bytes)
    for host in dirs.binds.values():
        host.mkdir(mode=0o700)
        os.chown(host, SANDBOX_UID, SANDBOX_UID)


def remove_session(dirs: SessionDirs) -> None:
    unmount(dirs.top)
    shutil.rmtree(dirs.top, ignore_errors=True)


# ---------------------------------------------------------------- bwrap


def _system_mounts() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        args += ["--ro-bind", path, path]
    for path in SYSTEM_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in READ_ONLY_EXTRAS:
        args += ["--ro-bind-try", path, path]
    return args


def bwrap_argv(python: Path, binds: dict[str, Path], command: list[str], seccomp_fd: int | None = None) -> list[str]:
    """The bwrap command line: new namespaces for everything, nothing shared but `binds`, and
    nothing writable but `binds`. No nested user namespace: without one the code can make no
    other namespace either, so every process it starts stays in the sandbox's pid namespace,
    where the end-of-call kill and the memory watchdog see it."""
    args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--uid", str(INNER_UID), "--gid", str(INNER_UID), "--hostname", "sandbox",
            *_system_mounts(), "--ro-bind", str(python), PYTHON_INSIDE,
            "--proc", "/proc", "--dev", "/dev"]
    for inside, host in binds.items():
        args += ["--bind", str(host), inside]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    # bwrap's own root is an uncapped tmpfs (/, /etc, /opt, /run…): read-only, binds stay writable
    return [*args, "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", DATA_INSIDE if DATA_INSIDE in binds else "/", *command]


@contextlib.contextmanager
def seccomp_filter() -> Iterator[int | None]:
    """An fd with the sandbox's seccomp program for bwrap (None where there is none), closed after."""
    fd = seccomp.program_fd()
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def kernel_command(limits: Limits, connection_file: str) -> list[str]:
    """The launcher (limits, then ipykernel) with the kernel's options."""
    rlimits = {"RLIMIT_AS": [limits.memory_bytes] * 2, "RLIMIT_NPROC": [limits.processes] * 2,
               "RLIMIT_CPU": [limits.cpu_seconds, limits.cpu_seconds + 5],  # SIGXCPU, then SIGKILL
               "RLIMIT_FSIZE": [limits.disk_bytes] * 2, "RLIMIT_CORE": [0, 0]}
    return [f"{PYTHON_INSIDE}/bin/python", "-c", LAUNCHER, json.dumps(rlimits), "-f", connection_file,
            "--HistoryManager.enabled=False", "--InteractiveShell.colors=NoColor",
            "--IPKernelApp.quiet=True"]


def sandbox_env() -> dict[str, str]:
    """The whole environment of the sandbox: Agg-based inline matplotlib, one BLAS thread."""
    return {
        "PATH": f"{PYTHON_INSIDE}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": HOME_INSIDE,
        "USER": "sandbox", "LOGNAME": "sandbox", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "MPLCONFIGDIR": f"{HOME_INSIDE}/.config/matplotlib", "IPYTHONDIR": f"{HOME_INSIDE}/.ipython",
        "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",  # per-thread arenas would reserve 64 MiB of address space each
    }


# ---------------------------------------------------------------- can this host do it?


def sandbox_problem(python: Path | None = None) -> str | None:
    """None if this host can run sandboxed kernels; else one line saying why not."""
    return _problem(python or default_python())


@functools.cache
def _problem(python: Path) -> str | None:
    for check in (_platform_problem, _python_problem, _probe_problem):
        problem = check(python)
        if problem:
            return problem
    return None


def _platform_problem(python: Path) -> str | None:
    if not sys.platform.startswith("linux"):
        return "code_interpreter sandboxing needs Linux"
    if os.geteuid() != 0:
        return "code_interpreter needs assistd to run as root (it mounts a tmpfs per session and runs kernels under their own uid)"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    try:
        import jupyter_client  # noqa: F401
    except ImportError:
        return "jupyter_client is not installed (pip install 'assistd[code]')"
    return None


def _python_problem(python: Path) -> str | None:
    executable = python / "bin" / "python"
    if not executable.exists():
        return f"no sandbox Python at {executable} (set ASSISTD_CODE_PYTHON to a venv with ipykernel, numpy, pandas, matplotlib)"
    real = os.path.realpath(executable)
    if not any(real.startswith(d + "/") for d in SYSTEM_DIRS) and not real.startswith(str(python.resolve()) + "/"):
        return f"the sandbox Python's interpreter {real} is outside {', '.join(SYSTEM_DIRS)}, so the sandbox can't see it"
    return None


def _probe_problem(python: Path) -> str | None:
    """Start a throw-away sandbox as the kernels will be started, and import what they need."""
    with tempfile.TemporaryDirectory(prefix="assistd-probe-") as scratch:
        dirs = SessionDirs(Path(scratch) / "s")
        os.chmod(scratch, 0o711)
        try:
            prepare_session(dirs, Limits(disk_bytes=1024 * 1024))
        except OSError as exc:
            return f"cannot mount a tmpfs for the sessions: {exc}"
        try:
            return _run_probe(python, dirs)
        finally:
            remove_session(dirs)


def _run_probe(python: Path, dirs: SessionDirs) -> str | None:
    code = "import ipykernel, numpy, pandas, matplotlib, matplotlib_inline"
    with seccomp_filter() as fd:
        argv = bwrap_argv(python, dirs.binds, [f"{PYTHON_INSIDE}/bin/python", "-c", code], fd)
        try:
            done = subprocess.run(argv, env=sandbox_env(), user=SANDBOX_UID, group=SANDBOX_UID, extra_groups=[],
                                  capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
                                  pass_fds=() if fd is None else (fd,))
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not start a sandbox: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
        return f"a test sandbox failed: {last}"
    return None
