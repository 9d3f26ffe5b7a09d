"""`assistd setup-sandbox`: build the Python environment code_interpreter's kernels run, from the
requirements this package ships, and install bubblewrap where we can (root on Debian).

The environment's interpreter must be the system one (/usr/bin/python3): the sandbox shows the
kernels /usr, not a pyenv or a home directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from assistd.config import load_settings

SYSTEM_PYTHON = Path("/usr/bin/python3")


def requirements_text() -> str:
    return (resources.files("assistd.execution.code_interpreter") / "sandbox-requirements.txt").read_text()


def default_target() -> Path | None:
    """ASSISTD_CODE_PYTHON, else `.venv-code` beside assistd's venv (where assistd looks for it)."""
    if (configured := load_settings(only=("code_python",)).code_python) is not None:
        return configured
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix).with_name(".venv-code")
    return None


def _is_debian_root() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *packages]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


def ensure_system_packages() -> list[str]:
    """Install bubblewrap and python3-venv when missing and we can (root, apt-get); returns
    advice for what is still missing."""
    missing = []
    if shutil.which("bwrap") is None:
        missing.append("bubblewrap")
    if not SYSTEM_PYTHON.exists() or subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import ensurepip, venv"], capture_output=True, check=False).returncode != 0:
        missing.append("python3-venv")
    if not missing:
        return []
    if _is_debian_root():
        print(f"installing {', '.join(missing)} with apt-get", file=sys.stderr)
        _apt_install(*missing)
        return []
    return [f"install {' and '.join(missing)} as root (Debian/Ubuntu: apt-get install {' '.join(missing)}; "
            f"Fedora: dnf install bubblewrap python3)"]


def build(target: Path, quiet: bool = False) -> None:
    """Create (or update) the venv at `target` with the shipped requirements."""
    if not (target / "bin" / "python").exists():
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(target)], check=True)
    requirements = target / "assistd-sandbox-requirements.txt"
    requirements.write_text(requirements_text())
    subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", *(["--quiet"] if quiet else []),
                    "--disable-pip-version-check", "-r", str(requirements)], check=True)


def _sandbox_problem(target: Path) -> str | None:
    """What assistd itself checks at start: a throw-away sandbox with this environment."""
    from assistd.execution.code_interpreter import sandbox_problem

    return sandbox_problem(target.absolute())


def setup_sandbox(target: Path | None, quiet: bool = False) -> int:
    """The command: 0 when the environment is built and the host has what the sandbox needs."""
    target = target or default_target()
    if target is None:
        print("assistd setup-sandbox: assistd is not in a venv; pass --target DIR and set "
              "ASSISTD_CODE_PYTHON=DIR for `assistd serve`", file=sys.stderr)
        return 2
    advice = ensure_system_packages()
    if not SYSTEM_PYTHON.exists():
        print(f"assistd setup-sandbox: {SYSTEM_PYTHON} is missing; {'; '.join(advice)}", file=sys.stderr)
        return 1
    try:
        build(target, quiet)
    except subprocess.CalledProcessError as exc:
        print(f"assistd setup-sandbox: building {target} failed: {exc}", file=sys.stderr)
        return 1
    print(f"code_interpreter's Python is ready at {target}")
    if advice:
        print(f"still missing for code_interpreter: {'; '.join(advice)}", file=sys.stderr)
        return 1
    if problem := _sandbox_problem(target):
        print(f"assistd setup-sandbox: the sandbox can't use {target}: {problem}. Every folder above it must "
              "be searchable by the sandbox uid (o+x): build it elsewhere with --target (e.g. "
              "/opt/assistd/code-python) and set ASSISTD_CODE_PYTHON to it", file=sys.stderr)
        return 1
    print("code_interpreter can run here: a test sandbox started")
    if target.resolve() != (default_target() or target).resolve():
        print(f"set ASSISTD_CODE_PYTHON={target} for `assistd serve`")
    return 0
