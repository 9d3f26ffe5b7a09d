"""Text of uploaded files, and their chunks: pure functions, run in a bounded child process.

Every parser here reads hostile input, so the ingester never calls them in the server's own
process: `assistd.execution.bounded` runs this module as a child process (`main`), which sets
its own memory and CPU limits before it imports a parser. The parsers also bound themselves where they can: a Word document's XML is streamed
(never built into a tree), its inflated size is checked before it is read, and every
extractor stops as soon as the text passes OpenAI's limit of 5,000,000 tokens per file.

This module imports no other part of assistd, and each parser only when a file needs it, so
the child starts in a few tens of milliseconds.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path, PurePath
from typing import Any

MAX_FILE_TOKENS = 5_000_000  # OpenAI's limit per file in a vector store
DOCX_MAX_XML_BYTES = 256 * 1024 * 1024  # inflated size of a Word document's text part
ZIP_MAX_MEMBERS = 10_000
_TOKEN = re.compile(r"\w+|[^\w\s]")

TEXT_EXTENSIONS = frozenset(
    [".txt", ".md", ".markdown", ".rst", ".tex", ".log", ".json", ".jsonl", ".csv", ".tsv", ".xml", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".sql", ".py", ".js", ".mjs", ".ts", ".jsx", ".tsx", ".java", ".kt", ".scala", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".go", ".rs", ".rb", ".php", ".pl", ".lua", ".swift", ".r", ".sh", ".bash", ".css", ".scss", ".vue", ".svelte"]
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


def too_many_tokens(limit: int) -> ExtractionError:
    return ExtractionError("invalid_file", f"The file has more than {limit:,} tokens, the most a file may have.")


# ---------------------------------------------------------------- tokens


class TokenBudget:
    """Collects a document's text part by part; past `limit` tokens it stops the extraction."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.parts: list[str] = []

    def add(self, part: str) -> None:
        for _ in _TOKEN.finditer(part):
            self.used += 1
            if self.used > self.limit:
                raise too_many_tokens(self.limit)
        self.parts.append(part)

    def collect(self, parts: Iterable[str], separator: str) -> str:
        for part in parts:
            self.add(part)
        return separator.join(self.parts)


# ---------------------------------------------------------------- text and HTML


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


# ---------------------------------------------------------------- PDF


def pdf_pages(data: bytes) -> Iterator[str]:
    """The text of each page of a PDF, one at a time (none for a scanned page: there is no OCR)."""
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ExtractionError("invalid_file", "The PDF is encrypted.")
    for page in reader.pages:
        yield page.extract_text() or ""


def pdf_text(data: bytes, max_tokens: int = MAX_FILE_TOKENS) -> str:
    return TokenBudget(max_tokens).collect(pdf_pages(data), "\n\n")


# ---------------------------------------------------------------- Word


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_P, _TBL, _TR, _TC = f"{_W}p", f"{_W}tbl", f"{_W}tr", f"{_W}tc"
_RUN_TEXT = {f"{_W}t": None, f"{_W}tab": "\t", f"{_W}br": "\n", f"{_W}cr": "\n"}
_OFFICE_DOCUMENT = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"


def _paragraph_text(paragraph: Any) -> str:
    """A paragraph's runs (hyperlinks' too) as text; tabs and breaks as python-docx gives them."""
    out = []
    for node in paragraph.iter(*_RUN_TEXT):
        fixed = _RUN_TEXT[node.tag]
        out.append(node.text or "" if fixed is None else fixed)
    return "".join(out)


def _row_text(row: Any) -> str:
    cells = ("\n".join(_paragraph_text(p) for p in cell.iterchildren(_P)) for cell in row.iterchildren(_TC))
    return " | ".join(cells)


def _main_part(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The document's main part (named in `_rels/.rels`), checked before anything is inflated."""
    from lxml import etree

    infos = archive.infolist()
    if len(infos) > ZIP_MAX_MEMBERS:
        raise ExtractionError("invalid_file", f"The DOCX file has more than {ZIP_MAX_MEMBERS:,} parts.")
    name = "word/document.xml"
    rels = archive.getinfo("_rels/.rels") if "_rels/.rels" in archive.namelist() else None
    if rels is not None and rels.file_size <= 1 << 20:
        root = etree.fromstring(archive.read(rels), etree.XMLParser(resolve_entities=False, no_network=True))
        for rel in root.iter(_RELS):
            if rel.get("Type") == _OFFICE_DOCUMENT and rel.get("Target"):
                name = str(rel.get("Target")).lstrip("/")
    try:
        part = archive.getinfo(name)
    except KeyError as exc:
        raise ExtractionError("invalid_file", "The DOCX file has no document part.") from exc
    if part.file_size > DOCX_MAX_XML_BYTES:
        raise ExtractionError("invalid_file", f"The DOCX file's text inflates to more than "
                                              f"{DOCX_MAX_XML_BYTES // (1 << 20)} MB.")
    return part


def docx_lines(data: bytes) -> Iterator[str]:
    """The paragraphs and table rows (cells joined by " | ") of a Word document, in document
    order. The XML is streamed and each finished paragraph or row is dropped, so memory stays
    flat however many there are."""
    from lxml import etree

    with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open(_main_part(archive)) as xml:
        tables = paragraphs = 0
        events = etree.iterparse(xml, events=("start", "end"), tag=(_P, _TBL, _TR), resolve_entities=False,
                                 no_network=True, load_dtd=False, huge_tree=False, remove_comments=True)
        for event, element in events:
            if event == "start":
                tables += element.tag == _TBL
                paragraphs += element.tag == _P
                continue
            if element.tag == _TBL:
                tables -= 1
            elif element.tag == _P:
                paragraphs -= 1
                if tables or paragraphs:
                    continue  # a cell's paragraph (its row says it) or a text box inside a paragraph
                yield _paragraph_text(element)
            elif tables == 1:
                yield _row_text(element)
            else:
                continue
            _drop(element)


def _drop(element: Any) -> None:
    """Free a finished element and the finished siblings before it."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    while parent is not None and element.getprevious() is not None:
        del parent[0]


def docx_text(data: bytes, max_tokens: int = MAX_FILE_TOKENS) -> str:
    return TokenBudget(max_tokens).collect(docx_lines(data), "\n")


# ---------------------------------------------------------------- by extension


def _document_text(suffix: str, data: bytes, max_tokens: int) -> str:
    extract: Callable[[bytes, int], str] = pdf_text if suffix == ".pdf" else docx_text
    try:
        return extract(data, max_tokens)
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:  # a malformed document can make a parser raise almost anything
        raise ExtractionError("invalid_file", f"The {suffix[1:].upper()} file could not be read: {exc}.") from exc


def extract_text(filename: str, data: bytes, max_tokens: int = MAX_FILE_TOKENS) -> str:
    """The text of a file, by its extension; raises ExtractionError when there is none, or when
    it has more than `max_tokens` tokens."""
    suffix = PurePath(filename).suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        text = TokenBudget(max_tokens).collect([decode_text(data)], "")
        if suffix == ".json":
            _check_json(text)
    elif suffix in HTML_EXTENSIONS:
        text = TokenBudget(max_tokens).collect([html_text(decode_text(data))], "")
    elif suffix in DOCUMENT_EXTENSIONS:
        text = _document_text(suffix, data, max_tokens)
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


def chunk_text(text: str, max_tokens: int, overlap: int) -> list[str]:
    """Windows of at most `max_tokens` tokens, each starting `max_tokens - overlap` tokens after
    the previous one; each chunk is the original text from its first token to its last."""
    starts, ends = array("q"), array("q")  # 16 bytes a token: 5,000,000 of them fit in 80 MB
    for match in _TOKEN.finditer(text):
        starts.append(match.start())
        ends.append(match.end())
    step = max(1, max_tokens - overlap)
    chunks: list[str] = []
    for first in range(0, len(starts), step):
        last = min(first + max_tokens, len(starts)) - 1
        chunks.append(text[starts[first]:ends[last]])
        if first + max_tokens >= len(starts):
            break
    return chunks


def _import_parser(suffix: str) -> None:
    """Load the parser a file needs before the file itself: under a memory limit, a library
    that no longer fits is a MemoryError, not an ImportError that reads as a broken file."""
    import importlib

    try:
        importlib.import_module({".pdf": "pypdf", ".docx": "lxml.etree"}.get(suffix, "json"))
    except ImportError as exc:
        if "failed to map" not in str(exc) and "allocate" not in str(exc):
            raise
        raise MemoryError(str(exc)) from exc


def prepare(filename: str, path: str, strategy: dict[str, Any], max_tokens: int = MAX_FILE_TOKENS) -> list[str]:
    """Read, extract and chunk one file (run it in a bounded child: see the module's doc)."""
    _import_parser(PurePath(filename).suffix.lower())
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ExtractionError("invalid_file", "The file's contents are no longer available.") from exc
    sizes = strategy["static"]
    text = extract_text(filename, data, max_tokens)
    del data
    return chunk_text(text, sizes["max_chunk_size_tokens"], sizes["chunk_overlap_tokens"])


# ---------------------------------------------------------------- the child process


def _limit_self(memory_bytes: int, seconds: float) -> None:
    """Limits set by the child on itself, before any parser is imported: past `memory_bytes` an
    allocation fails (MemoryError), past its CPU seconds the kernel ends it (even if the server
    that waits for it died)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = int(seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


MEMORY_ANSWER = [b'{"memory": true}\n']


def _answer(chunks: list[str]) -> list[bytes]:
    """The chunks as a JSON header of their UTF-8 lengths, then their bytes: cheap to read back
    without a parser (and without unpickling anything a hostile file could have shaped)."""
    encoded = [chunk.encode() for chunk in chunks]
    return [json.dumps({"lengths": [len(part) for part in encoded]}).encode() + b"\n", *encoded]


def _error(code: str, message: str) -> list[bytes]:
    return [json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"]


def _run(request: dict[str, Any]) -> list[bytes]:
    try:
        chunks = prepare(request["filename"], request["path"], request["strategy"], request["max_tokens"])
        return _answer(chunks)
    except ExtractionError as exc:
        return _error(exc.code, exc.message)
    except MemoryError:
        return MEMORY_ANSWER
    except RecursionError:
        return _error("invalid_file", "The file is nested too deeply to be read.")
    except Exception as exc:  # noqa: BLE001 - whatever a parser raises becomes the file's error
        return _error("invalid_file", f"The file could not be read: {exc}.")


def main() -> None:
    """Child process: a JSON request on stdin, the chunks (or the error) on stdout."""
    import logging
    import sys

    request = json.loads(sys.stdin.buffer.read())
    _limit_self(request["memory_bytes"], request["seconds"])
    logging.disable(logging.WARNING)  # parsers' complaints about malformed files are expected
    try:
        answer = _run(request)
    except MemoryError:
        answer = MEMORY_ANSWER  # the answer itself did not fit
    for part in answer:
        sys.stdout.buffer.write(part)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
