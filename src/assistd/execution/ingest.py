"""Ingestion of vector store files: text extraction, chunking, and the background ingester.

A vector store file is created `in_progress` with no holder. An ingester (one runs next to
every worker) claims it in the database with a lease it renews, extracts and chunks the text
in a thread, and stores the chunks together with the guarded `in_progress → completed` change
(or ends it `failed` with `last_error`). A file whose holder died is claimed again once its
lease lapses; on SQLite, which is one process's alone, every claim is dropped at start.

Tokens are approximated without a tokenizer (none can be downloaded): each run of word
characters and each other non-space character counts as one token. For English prose that is
close to OpenAI's tokenizers, a little under for long words and over for dense punctuation.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePath
from typing import Any

import docx
import pypdf

from assistd.execution.embeddings import EmbeddingError
from assistd.execution.runtime import Runtime
from assistd.storage.files import FileStore
from assistd.storage.vector_stores import VectorStoreStore

log = logging.getLogger("assistd.ingest")
POLL_SECONDS = 0.5
CONCURRENCY = 4
_TOKEN = re.compile(r"\w+|[^\w\s]")

TEXT_EXTENSIONS = frozenset(
    ".txt .md .markdown .rst .tex .log .json .jsonl .csv .tsv .xml .yaml .yml .toml .ini .cfg .sql "
    ".py .js .mjs .ts .jsx .tsx .java .kt .scala .c .h .cc .cpp .hpp .cs .go .rs .rb .php .pl .lua "
    ".swift .r .sh .bash .css .scss .vue .svelte".split()
)
HTML_EXTENSIONS = frozenset({".html", ".htm"})
DOCUMENT_EXTENSIONS = frozenset({".pdf", ".docx"})


class ExtractionError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def last_error(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# ---------------------------------------------------------------- extraction


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1252/Latin-1; binary data is refused."""
    if b"\x00" in data:
        raise ExtractionError("invalid_file", "The file is binary, not text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _HTMLText(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
                       "article", "header", "footer", "pre", "blockquote", "table", "ul", "ol", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """The visible text of an HTML document: tags, scripts and styles stripped."""
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def pdf_text(data: bytes) -> str:
    """The text of every page of a PDF (none for a scanned page: there is no OCR)."""
    reader = pypdf.PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ExtractionError("invalid_file", "The PDF is encrypted.")
    return "\n\n".join(page.extract_text() or "" for page in reader.pages)


def docx_text(data: bytes) -> str:
    """The paragraphs of a Word document, then its tables a row per line."""
    document = docx.Document(io.BytesIO(data))
    lines = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        lines.extend(" | ".join(cell.text for cell in row.cells) for row in table.rows)
    return "\n".join(lines)


def _document_text(suffix: str, data: bytes) -> str:
    try:
        return pdf_text(data) if suffix == ".pdf" else docx_text(data)
    except ExtractionError:
        raise
    except Exception as exc:  # a malformed document can make a parser raise almost anything
        raise ExtractionError("invalid_file", f"The {suffix[1:].upper()} file could not be read: {exc}.") from exc


def extract_text(filename: str, data: bytes) -> str:
    """The text of a file, by its extension; raises ExtractionError when there is none."""
    suffix = PurePath(filename).suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        text = decode_text(data)
        if suffix == ".json":
            _check_json(text)
    elif suffix in HTML_EXTENSIONS:
        text = html_text(decode_text(data))
    elif suffix in DOCUMENT_EXTENSIONS:
        text = _document_text(suffix, data)
    else:
        raise ExtractionError("unsupported_file", f"Files of type '{suffix or filename}' are not supported.")
    if not text.strip():
        raise ExtractionError("invalid_file", "The file contains no text.")
    return text


def _check_json(text: str) -> None:
    try:
        json.loads(text)
    except ValueError as exc:
        raise ExtractionError("invalid_file", f"The file is not valid JSON: {exc}.") from exc


# ---------------------------------------------------------------- chunking


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))


def chunk_text(text: str, max_tokens: int, overlap: int) -> list[str]:
    """Windows of at most `max_tokens` tokens, each starting `max_tokens - overlap` tokens after
    the previous one; each chunk is the original text from its first token to its last."""
    spans = [m.span() for m in _TOKEN.finditer(text)]
    step = max(1, max_tokens - overlap)
    chunks: list[str] = []
    for start in range(0, len(spans), step):
        window = spans[start:start + max_tokens]
        chunks.append(text[window[0][0]:window[-1][1]])
        if start + max_tokens >= len(spans):
            break
    return chunks


def prepare(filename: str, path: Path, strategy: dict[str, Any]) -> list[str]:
    """Read, extract and chunk one file (blocking: run it in a thread)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ExtractionError("invalid_file", "The file's contents are no longer available.") from exc
    sizes = strategy["static"]
    return chunk_text(extract_text(filename, data), sizes["max_chunk_size_tokens"], sizes["chunk_overlap_tokens"])


# ---------------------------------------------------------------- the ingester


@dataclass(frozen=True)
class Claimed:
    vector_store_id: str
    file_id: str
    strategy: dict[str, Any]


class Ingester:
    """Claims pending vector store files from the database and ingests a few at a time."""

    def __init__(self, rt: Runtime, holder: str) -> None:
        self.rt = rt
        self.holder = f"ingest:{holder}"
        self.store = VectorStoreStore(rt.store.db)
        self.files = FileStore(rt.store.db, rt.settings.files_dir)
        self.running: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._slot_freed = asyncio.Event()

    async def start(self) -> None:
        if not self.rt.shared_database:
            await self.store.release_claims()
        self._loops = [asyncio.create_task(self._claim_loop(), name="assistd-ingest"),
                       asyncio.create_task(self._renew_loop(), name="assistd-ingest-lease")]

    async def stop(self) -> None:
        """Stop at once; files being ingested are released for any ingester to take again."""
        for task in [*self._loops, *self.running]:
            task.cancel()
        await asyncio.gather(*self._loops, *self.running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.db.execute(
                "UPDATE vector_store_files SET claimed_by = NULL, claimed_at = NULL "
                "WHERE claimed_by = :w AND status = 'in_progress'", w=self.holder)

    async def _claim_loop(self) -> None:
        """Claim what there is room for; again as soon as a file is done, else every POLL_SECONDS."""
        while True:
            self._slot_freed.clear()
            try:
                await self._claim_available()
            except Exception:
                log.exception("claiming vector store files failed; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), POLL_SECONDS)

    async def _claim_available(self) -> None:
        free = CONCURRENCY - len(self.running)
        if free <= 0:
            return
        at = time.time()
        rows = await self.store.claim_files(self.holder, free, at, at - self.rt.settings.lease_seconds)
        for row in rows:
            claimed = Claimed(row["vector_store_id"], row["id"], json.loads(row["chunking_strategy"]))
            task = asyncio.create_task(self._ingest(claimed), name=f"ingest-{claimed.file_id}")
            self.running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self._slot_freed.set()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.rt.settings.heartbeat_seconds, self.rt.settings.lease_seconds / 3))
            if self.running:
                try:
                    await self.store.renew_claims(self.holder, time.time())
                except Exception:
                    log.exception("renewing ingestion leases failed")

    async def _ingest(self, claimed: Claimed) -> None:
        vs_id, file_id = claimed.vector_store_id, claimed.file_id
        try:
            filename = await self._filename(file_id)
            chunks = await asyncio.to_thread(prepare, filename, self.files.path(file_id), claimed.strategy)
        except ExtractionError as exc:
            await self.store.fail_file(self.holder, vs_id, file_id, exc.last_error())
            return
        except Exception:
            log.exception("ingesting %s into %s failed", file_id, vs_id)
            await self.store.fail_file(self.holder, vs_id, file_id,
                                       {"code": "server_error", "message": "The file could not be processed."})
            return
        embedder = self.rt.embedder
        vectors = None
        if embedder is not None and chunks:
            try:
                vectors = await embedder.embed(chunks)
            except EmbeddingError as exc:
                await self.store.fail_file(self.holder, vs_id, file_id, {"code": "server_error", "message": str(exc)})
                return
        model = embedder.model if embedder is not None else None
        if await self.store.finish_file(self.holder, vs_id, file_id, chunks, vectors, model):
            log.info("ingested %s into %s: %d chunks", file_id, vs_id, len(chunks))

    async def _filename(self, file_id: str) -> str:
        row = await self.store.db.fetchone("SELECT filename FROM files WHERE id = :f", f=file_id)
        if row is None:
            raise ExtractionError("invalid_file", f"The file '{file_id}' no longer exists.")
        return str(row["filename"])
