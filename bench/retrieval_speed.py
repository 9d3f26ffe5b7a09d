"""Vector store speed: ingestion throughput and search latency at 10,000 and 100,000 chunks.

Text from the Linux man pages (bench/corpus.py), chunked statically at 100 tokens without
overlap, embeddings off (lexical search). One store grows in two steps: 10,000 chunks as
one-page files (~6 KB), then 90,000 more as 64-page files (~450 KB, later copies of the pages
with their paragraphs shuffled). Ingestion is timed from the file batches' creation to the
last file out of `in_progress`; the baseline is the same files read and chunked in this process
with assistd's own `prepare` (one core). Search latency is sampled one request at a time,
interleaved with a GET of the vector store object, the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from bench.common import (
    BACKENDS,
    DISTRIBUTION_HEADER,
    assistd,
    async_client,
    database,
    distribution_line,
    distribution_row,
    log_problems,
    main,
    percentile,
    report,
    run_bounded,
)
from bench.corpus import Page, bulk_documents, load_pages, questions
from bench.stores import NO_UPSTREAM, Ingested, ingest, ingested_text, static_chunking, upload

CHUNK_TOKENS = 100  # the smallest static chunk the API allows
STEPS = (10_000, 100_000)  # chunks in the store when search is measured
BUNDLE_PAGES = 64  # pages per file in the second step
SEARCHES = 200  # per size, each paired with a GET of the store
WARMUP = 10
INGEST_LIMIT = 240.0
TIME_LIMIT = 420.0  # per backend
LEXICAL_ONLY = {"ASSISTD_EMBEDDINGS_MODEL": "", "ASSISTD_RETRIEVAL": ""}

Document = tuple[str, bytes]


def _strategy() -> dict[str, Any]:
    return {"static": {"max_chunk_size_tokens": CHUNK_TOKENS, "chunk_overlap_tokens": 0}}


def _chunks(text: str) -> int:
    from assistd.execution.extract import chunk_text

    return len(chunk_text(text, CHUNK_TOKENS, 0))


def _take(documents: Any, chunks: int) -> tuple[list[Document], int]:
    """Documents from the stream until they make at least `chunks` chunks."""
    taken: list[Document] = []
    total = 0
    for name, text in documents:
        taken.append((name, text.encode()))
        total += _chunks(text)
        if total >= chunks:
            break
    return taken, total


@dataclass
class Step:
    """One ingestion step and the searches after it."""

    label: str
    documents: list[Document]
    chunks: int
    baseline_seconds: float = 0.0  # read + extract + chunk in-process
    upload_seconds: float = 0.0
    ingested: Ingested | None = None
    search: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def megabytes(self) -> float:
        return sum(len(data) for _, data in self.documents) / 1e6


def plan(pages: list[Page]) -> list[Step]:
    """10,000 chunks as one-page files, then 90,000 more as 64-page files."""
    singles = ((f"{p.name}.txt", p.text) for p in pages)
    first, first_chunks = _take(singles, STEPS[0])
    bundles = bulk_documents(pages, first_copy=1, pages_per_document=BUNDLE_PAGES)
    second, second_chunks = _take(bundles, STEPS[1] - first_chunks)
    return [Step("one-page files", first, first_chunks), Step(f"{BUNDLE_PAGES}-page files", second, second_chunks)]


def time_in_process(step: Step) -> None:
    """The baseline: the same files written to disk, then read, extracted and chunked here."""
    from assistd.execution.extract import prepare

    with tempfile.TemporaryDirectory(prefix="assistd-bench-speed-") as tmp:
        paths = []
        for name, data in step.documents:
            path = Path(tmp) / name
            path.write_bytes(data)
            paths.append((name, path))
        start = time.perf_counter()
        for name, path in paths:
            prepare(name, str(path), _strategy())
        step.baseline_seconds = time.perf_counter() - start


async def _sample(client: openai.AsyncOpenAI, store_id: str, queries: list[str], step: Step) -> None:
    for i, query in enumerate(queries):
        for search_first in ((True, False) if i % 2 else (False, True)):
            start = time.perf_counter()
            try:
                if search_first:
                    await client.vector_stores.search(store_id, query=query, max_num_results=10)
                else:
                    await client.vector_stores.retrieve(store_id)
            except openai.APIError as exc:
                step.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if i >= WARMUP:
                (step.search if search_first else step.get).append(time.perf_counter() - start)


async def _measure(base_url: str, steps: list[Step], queries: list[str]) -> None:
    client = async_client(base_url)
    try:
        store = await client.vector_stores.create(name="retrieval-speed")
        chunking = static_chunking(CHUNK_TOKENS, 0)
        for step in steps:
            start = time.perf_counter()
            file_ids = await upload(client, step.documents)
            step.upload_seconds = time.perf_counter() - start
            step.ingested = await ingest(client, store.id, file_ids, chunking, INGEST_LIMIT)
            if not step.ingested.finished:
                break
            await _sample(client, store.id, queries[:WARMUP + SEARCHES], step)
    finally:
        await client.close()


@dataclass
class Result:
    db: str
    steps: list[Step]
    problems: list[str]


def run_one(db: str, pages: list[Page]) -> Result:
    steps = plan(pages)
    for step in steps:
        time_in_process(step)
    queries = [q.query for q in questions(pages)]
    with database(db) as url, assistd(NO_UPSTREAM, url, settings=LEXICAL_ONLY) as server:
        run_bounded(_measure(server.base_url, steps, queries), TIME_LIMIT)
        return Result(db, steps, log_problems(server.log_path))


def run(dbs: tuple[str, ...] = ("sqlite", "postgresql")) -> str:
    pages = load_pages()
    return _render([run_one(db, pages) for db in dbs])


# ---------------------------------------------------------------- the report


def _mbps(megabytes: float, seconds: float) -> str:
    return f"{megabytes / seconds:.2f} MB/s" if seconds > 0 else "–"


def _ingestion_row(result: Result, step: Step) -> str:
    ingested = step.ingested
    seconds = ingested.seconds if ingested else float("nan")
    files = len(step.documents)
    server = _mbps(step.megabytes, seconds) if ingested and ingested.finished else "not finished"
    ratio = (step.baseline_seconds / seconds) if ingested and ingested.finished else float("nan")
    return (f"| {BACKENDS[result.db]} | {step.label}: {files} files, {step.megabytes:.1f} MB, {step.chunks:,} chunks "
            f"| **{server}** ({files / seconds:.1f} files/s) | {_mbps(step.megabytes, step.upload_seconds)} "
            f"| {_mbps(step.megabytes, step.baseline_seconds)} | {ratio:.3f} |")


def _search_rows(result: Result) -> list[tuple[str, list[float]]]:
    rows = []
    total = 0
    for step in result.steps:
        total += step.chunks
        rows.append((f"{BACKENDS[result.db]}, {total:,} chunks: search (max_num_results=10)", step.search))
        rows.append((f"{BACKENDS[result.db]}, {total:,} chunks: GET the vector store (baseline)", step.get))
    return rows


def _ratios(result: Result) -> list[str]:
    lines = []
    p50s = []
    total = 0
    for step in result.steps:
        total += step.chunks
        if step.search and step.get:
            search, get = percentile(step.search, 0.5), percentile(step.get, 0.5)
            p50s.append((total, search))
            lines.append(f"{BACKENDS[result.db]}, {total:,} chunks: search p50 / GET p50 = {search / get:.1f}")
    if len(p50s) == 2:
        (n0, s0), (n1, s1) = p50s
        lines.append(f"{BACKENDS[result.db]}: search p50 at {n1:,} / at {n0:,} chunks = {s1 / s0:.1f} "
                     f"(chunks × {n1 / n0:.1f})")
    return lines


def _render(results: list[Result]) -> str:
    lines: list[str] = []
    ingestion = []
    distributions = []
    ratios = []
    for result in results:
        for step in result.steps:
            ingestion.append(_ingestion_row(result, step))
            lines.append(f"{BACKENDS[result.db]} ingestion, {step.label}: {step.megabytes:.1f} MB, "
                         f"{step.chunks:,} chunks in {ingested_text(step.ingested) if step.ingested else '–'}; "
                         f"in-process read+chunk {_mbps(step.megabytes, step.baseline_seconds)}")
            lines += [f"  error: {e}" for e in step.errors[:3]]
        for name, values in _search_rows(result):
            distributions.append(distribution_row(name, values))
            lines.append(distribution_line(name, values))
        ratios += _ratios(result)
        lines += [f"{BACKENDS[result.db]} server log: {p}" for p in result.problems[:5]]
    lines += ratios
    markdown = [
        "### Vector store speed: ingestion and search at 10,000 and 100,000 chunks", "",
        (f"Text of the Linux man pages (Debian manpages + manpages-dev), static chunks of {CHUNK_TOKENS} tokens "
         "without overlap, no embeddings (lexical search). One store per backend, grown in two steps: 10,000 "
         f"chunks as one-page files, then 90,000 more as {BUNDLE_PAGES}-page files (later copies of the pages, paragraphs "
         "shuffled). Ingestion: from creating the file batches to the last file out of `in_progress` (polled "
         "every 0.1 s); baseline: the same files read, extracted and chunked in the benchmark's process with "
         "assistd's own `prepare`, on one core. Upload (`files.create`, 8 at a time) is not part of ingestion."),
        "",
        "| backend | files | ingestion | upload | in-process read + chunk (baseline) | ratio to baseline |",
        "| --- | --- | --- | --- | --- | --- |",
        *ingestion, "",
        (f"Search: {SEARCHES} `vector_stores.search` requests per size (real queries: man page descriptions, "
         f"max_num_results=10), one at a time, each paired with a `vector_stores.retrieve` of the same store "
         f"(the baseline), alternating which goes first, after {WARMUP} warm-up pairs."), "",
        DISTRIBUTION_HEADER, *distributions, "",
        *[f"- {r}" for r in ratios],
    ]
    problems = [p for r in results for p in r.problems]
    if problems:
        markdown += ["", "Server log warnings/errors:", "", "```", *problems[:10], "```"]
    return report("Vector store speed", lines, markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=[*sorted(BACKENDS), "both"], default="both")
    args = parser.parse_args()
    main(lambda: run(("sqlite", "postgresql") if args.db == "both" else (args.db,)))
