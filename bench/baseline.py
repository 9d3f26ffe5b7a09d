"""The code of an earlier commit, to run beside this checkout's in the same benchmark.

`materialized("a43c4df")` extracts that commit's `src/` (`git archive`, read-only on the
repository) into a scratch directory, removed afterwards, also on errors. Its `Code.env()`
puts that `src/` first on PYTHONPATH, so `python -m assistd serve|worker|migrate` from the same
virtualenv imports the old package: the editable install of this checkout is only a path that
a `.pth` file appends to sys.path, after PYTHONPATH. That is checked once, by importing
`assistd` under the same environment and working directory as the servers get.

Only the code differs: the benchmark's client, fake upstream and the virtualenv's libraries
are this checkout's, for both.

`python -m bench.baseline [COMMIT]` shows where each side imports assistd from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import PYTHON, ROOT, scratch_dir

DEFAULT = "a43c4df"  # the commit issue 11 was filed against
WHERE = "import assistd; print(assistd.__file__)"


@dataclass(frozen=True)
class Code:
    """Which assistd a process runs: this checkout's (src is None) or a commit's copy."""

    label: str  # "current" or the short commit
    commit: str  # full hash; "" for the checkout as it is (uncommitted changes included)
    src: Path | None = None

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with PYTHONPATH leading to this code's package (unchanged for the checkout)."""
        if self.src is None:
            return dict(base)
        rest = base.get("PYTHONPATH", "")
        return {**base, "PYTHONPATH": str(self.src) + (os.pathsep + rest if rest else "")}

    def imported_from(self) -> Path:
        """Where `python -m assistd` run by the benchmarks (cwd = the repository root) finds the package."""
        done = subprocess.run([PYTHON, "-c", WHERE], cwd=ROOT, env=self.env(dict(os.environ)),
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode:
            raise RuntimeError(f"{self.label}: `import assistd` failed:\n{done.stderr[-2000:]}")
        return Path(done.stdout.strip()).resolve()


CURRENT = Code("current", "")


def checkout_label() -> str:
    """This checkout's commit, and whether its src/ has uncommitted changes: `current (51bf198)`."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "src")
    except (RuntimeError, OSError):
        return CURRENT.label
    return f"{CURRENT.label} ({commit}{' + uncommitted changes in src/' if dirty else ''})"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _extract_src(commit: str, into: Path) -> None:
    """`git archive <commit> src` unpacked under `into`, streamed (no tar file on disk)."""
    proc = subprocess.Popen(["git", "archive", "--format=tar", commit, "src"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            archive.extractall(into, filter="data")
    finally:
        proc.stdout.close()
        error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait(60):
            raise RuntimeError(f"git archive {commit} src failed: {error.strip()}")


@contextlib.contextmanager
def materialized(commit: str = DEFAULT) -> Iterator[Code]:
    """The commit's assistd in a scratch directory, for as long as the block runs."""
    full = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    work = scratch_dir(f"code-{full[:7]}")
    try:
        _extract_src(full, work)
        src = work / "src"
        code = Code(full[:7], full, src)
        found = code.imported_from()
        if not found.is_relative_to(src.resolve()):
            raise RuntimeError(f"with PYTHONPATH={src}, assistd is still imported from {found}")
        yield code
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(f"current: {CURRENT.imported_from()}")
    with materialized(sys.argv[1] if len(sys.argv) > 1 else DEFAULT) as old:
        print(f"{old.label} ({old.commit}): {old.imported_from()}")
