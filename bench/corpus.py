"""The retrieval benchmarks' real corpus: the Linux man pages Debian ships, as plain text.

The pages are those of Debian's `manpages` and `manpages-dev` packages (installed with apt-get
when missing) that are files of their own, not links or `.so` stubs. Each is rendered once with
man-db (80 columns, no justification or hyphenation) into a cache under ~/.cache/assistd-bench,
keyed by the packages' versions. A page's NAME section ("read - read from a file descriptor")
is taken out of its text and kept apart: the quality benchmark asks for the description.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("manpages", "manpages-dev")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "assistd-bench"
_PAGE_PATH = re.compile(r"^/usr/share/man/man\d/[^/]+\.gz$")
_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/()-]*$")


@dataclass(frozen=True)
class Page:
    name: str  # "read.2"
    names: str  # "read" or "printf, fprintf, …"
    description: str  # "read from a file descriptor"
    text: str  # the rendered page without its NAME section


# ---------------------------------------------------------------- the packages


def _version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package],
                         capture_output=True, text=True, check=False)
    return out.stdout.split()[-1] if out.stdout.startswith("install ok installed") else ""


def ensure_packages() -> dict[str, str]:
    """The packages' versions, installing them (and man-db) with apt-get first if needed."""
    if not all(_version(p) for p in (*PACKAGES, "man-db")):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES, "man-db"],
                       check=True, env=env, capture_output=True)
    return {p: _version(p) for p in PACKAGES}


def _is_stub(path: Path) -> bool:
    with gzip.open(path, "rt", errors="replace") as page:
        return page.read(200).lstrip().startswith(".so ")


def page_files() -> list[Path]:
    listed = subprocess.run(["dpkg", "-L", *PACKAGES], capture_output=True, text=True, check=True).stdout
    paths = [Path(line) for line in listed.splitlines() if _PAGE_PATH.match(line)]
    return sorted(p for p in paths if p.is_file() and not p.is_symlink() and not _is_stub(p))


# ---------------------------------------------------------------- rendering


def render(path: Path) -> str:
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_DISABLE_SECCOMP": "1"}
    env.pop("MAN_KEEP_FORMATTING", None)
    out = subprocess.run(["man", "--nj", "--nh", "-l", str(path)], capture_output=True, text=True,
                         env=env, check=False)
    return out.stdout


def split_name(rendered: str) -> tuple[str, str, str]:
    """(names, description, text without the NAME section) of a rendered page."""
    lines = rendered.splitlines()
    start = next((i for i, line in enumerate(lines) if line == "NAME"), None)
    if start is None:
        return "", "", rendered
    end = next((i for i in range(start + 1, len(lines)) if _HEADING.match(lines[i])), len(lines))
    name_line = " ".join(" ".join(lines[start + 1:end]).split())
    names, _, description = name_line.partition(" - ")
    text = "\n".join(lines[:start] + lines[end:])
    return names.strip(), description.strip(), text


def _cache_file(versions: dict[str, str]) -> Path:
    tag = "-".join(f"{p}_{v}" for p, v in versions.items())
    return CACHE / f"pages-{tag}.json"


def load_pages() -> list[Page]:
    """Every page, rendered (from the cache when it is there)."""
    cache = _cache_file(ensure_packages())
    if cache.exists():
        return [Page(**entry) for entry in json.loads(cache.read_text())]
    files = page_files()
    with ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        rendered = list(pool.map(render, files))
    pages = []
    for path, text in zip(files, rendered, strict=True):
        names, description, body = split_name(text)
        if body.strip():
            pages.append(Page(path.name.removesuffix(".gz"), names, description, body))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([p.__dict__ for p in pages]))
    return pages


# ---------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    query: str  # a page's NAME description
    page: str  # the one relevant page


def questions(pages: list[Page]) -> list[Question]:
    """One known-item question per page whose description is unique among the pages' (and has
    at least two words): asked for the description, the page is the one relevant document."""
    counts = Counter(p.description.lower() for p in pages)
    return [Question(p.description, p.name) for p in pages
            if p.description and len(p.description.split()) >= 2 and counts[p.description.lower()] == 1]


# ---------------------------------------------------------------- bulk text for the speed benchmark


def _paragraphs(text: str) -> list[str]:
    return [part for part in re.split(r"\n\s*\n", text) if part.strip()]


def variant(page: Page, copy: int) -> str:
    """The page's text as copy `copy`: copy 0 is the page itself, later copies have its
    paragraphs in another order, so that no two copies chunk alike."""
    if copy == 0:
        return page.text
    parts = _paragraphs(page.text)
    random.Random(f"{page.name}/{copy}").shuffle(parts)
    return "\n\n".join(parts) + "\n"


def bulk_documents(pages: list[Page], first_copy: int = 0, pages_per_document: int = 16) -> Iterator[tuple[str, str]]:
    """An endless stream of (filename, text): the pages, copy after copy, a few pages a file."""
    copy = first_copy
    while True:
        for start in range(0, len(pages), pages_per_document):
            group = pages[start:start + pages_per_document]
            text = "\n\n".join(variant(p, copy) for p in group)
            yield f"manpages-copy{copy}-{start // pages_per_document:03d}.txt", text
        copy += 1
