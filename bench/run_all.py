"""Run every benchmark, one after the other, and rewrite bench/RESULTS.md with this run's figures.

`python -m bench.run_all [--skip-postgres] [--skip-retrieval]`. Each benchmark has its own time limit; a
benchmark that fails is reported as failed and the rest still run; a benchmark that
would start after BUDGET seconds is skipped.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from bench import (
    cancel_latency,
    cancel_matrix,
    code_interpreter,
    concurrent_1000,
    first_delta,
    get_run_rps,
    retrieval_quality,
    retrieval_speed,
    scale_out,
    upstream_chunks,
)
from bench.common import ROOT, main, markdown_of, note_foreign_load

BUDGET = 1500.0  # seconds; about seven minutes, and 15–25 more with the retrieval benchmarks
RESULTS = ROOT / "bench" / "RESULTS.md"


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.rstrip()  # not strip(): `status --porcelain` lines start with a space


def _versions() -> str:
    names = ["openai", "httpx2", "aiohttp", "uvicorn", "uvloop", "httptools", "starlette", "aiosqlite", "asyncpg", "redis"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    dirty = [line[3:] for line in _git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    tree = f"`{commit}`" + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        (f"- machine: `nproc` = {len(os.sched_getaffinity(0))} ({cpu}), {memory / 2**20:.0f} GiB memory, "
        f"{platform.system()} {platform.release()}; load average before: {load}"),
        f"- Python {platform.python_version()}; {_versions()}",
        f"- code: {tree}",
    ]


def _sections(skip_postgres: bool, skip_retrieval: bool = False) -> list[tuple[str, Callable[[], str]]]:
    """The quiet, latency-sensitive ones first; the 1,000 runs, then the long retrieval ones, last."""
    sections: list[tuple[str, Callable[[], str]]] = [
        ("time to first delta", first_delta.run),
        ("cancel latency (SQLite)", cancel_latency.run),
    ]
    if not skip_postgres:
        sections.append(("cancel latency (PostgreSQL)", lambda: cancel_latency.run("postgresql")))
    sections.append(("CPU per upstream chunk", upstream_chunks.run))
    matrix = ("sqlite",) if skip_postgres else tuple(cancel_matrix.DEPLOYMENTS)
    sections.append(("cancel latency matrix", lambda: cancel_matrix.run(matrix, cancel_matrix.STATES, cancel_matrix.SHAPES)))
    sections += [
        ("GET run requests per second", get_run_rps.run),
        ("code_interpreter sessions", code_interpreter.run),
        ("1,000 concurrent streaming runs (SQLite)", concurrent_1000.run),
    ]
    if not skip_postgres:
        sections.append(("1,000 concurrent streaming runs (PostgreSQL)", lambda: concurrent_1000.run(db="postgresql")))
        sections.append(("scale-out: 1, 2 and 4 workers (PostgreSQL + Redis), 1 worker beside the baseline a43c4df", scale_out.run))
    if not skip_retrieval:
        backends = ("sqlite",) if skip_postgres else ("sqlite", "postgresql")
        sections.append(("vector store speed", lambda: retrieval_speed.run(backends)))
        sections.append(("retrieval quality (SQLite)", retrieval_quality.run))
    return sections


def _run_one(name: str, section: Callable[[], str]) -> str:
    started = time.monotonic()
    try:
        output = section()
    except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
        output = f"== {name}: FAILED\n<!-- markdown -->\n### {name}\n\nFailed:\n\n```\n{traceback.format_exc()}```\n"
    print(output, f"({name}: {time.monotonic() - started:.0f} s)\n", flush=True)
    return markdown_of(output).strip()


def run_all(skip_postgres: bool = False, skip_retrieval: bool = False) -> str:
    header = _machine()
    shared = note_foreign_load()
    start = time.monotonic()
    blocks = []
    for name, section in _sections(skip_postgres, skip_retrieval):
        if time.monotonic() - start > BUDGET:
            blocks.append(f"### {name}\n\nSkipped: the run had used its {BUDGET:.0f} s budget.")
            continue
        blocks.append(_run_one(name, section))
    total = time.monotonic() - start
    intro = [
        "# Benchmark results", "",
        "Written by `python -m bench.run_all` (see bench/README.md); every figure is from that one run.", "",
        *header, f"- the whole run took {total:.0f} s", "",
        ("The client, the fake upstream (tests/support/fake_upstream.py) and assistd share the machine's "
        "cores, so every figure includes their contention. Targets are printed beside the figures; "
        "nothing here passes or fails."), "",
    ]
    if shared:
        intro += ["**Other load during the run:**", "", "```", shared.strip(), "```", ""]
    text = "\n".join(intro) + "\n" + "\n\n".join(blocks) + "\n"
    RESULTS.write_text(text)
    return f"wrote {RESULTS.relative_to(ROOT)} ({total:.0f} s)"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-postgres", action="store_true", help="skip the PostgreSQL runs")
    parser.add_argument("--skip-retrieval", action="store_true",
                        help="skip the vector store benchmarks (retrieval_speed, retrieval_quality)")
    args = parser.parse_args()
    main(lambda: run_all(args.skip_postgres, args.skip_retrieval))
