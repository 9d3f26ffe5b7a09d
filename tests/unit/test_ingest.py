"""Text extraction, chunking, and dialect-specific migration statements."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import pytest

from assistd.execution import extract
from assistd.execution.bounded import Limits, extract_chunks
from assistd.execution.extract import ExtractionError, chunk_text, extract_text, html_text
from assistd.storage.migrate import statements


def test_chunks_are_windows_of_max_tokens_stepping_by_max_minus_overlap() -> None:
    text = " ".join(str(i) for i in range(10))
    assert chunk_text(text, 4, 2) == ["0 1 2 3", "2 3 4 5", "4 5 6 7", "6 7 8 9"]
    assert chunk_text(text, 4, 0) == ["0 1 2 3", "4 5 6 7", "8 9"]
    assert chunk_text("one two", 800, 400) == ["one two"]


def test_a_chunk_keeps_the_original_text_between_its_first_and_last_token() -> None:
    assert chunk_text("a,  b\n\nc d", 3, 0) == ["a,  b", "c d"]
    assert chunk_text("don't stop!", 1, 0) == ["don", "'", "t", "stop", "!"]  # a word, or one other mark


def test_html_loses_tags_scripts_and_styles_but_keeps_block_breaks() -> None:
    markup = "<style>p{}</style><p>One&nbsp;<i>two</i></p><script>x()</script><div>three</div>"
    assert html_text(markup) == "One two\nthree"  # whitespace runs, &nbsp; included, become one space


@pytest.mark.parametrize(("name", "data", "code"), [
    ("a.doc", b"\xd0\xcf\x11\xe0", "unsupported_file"),
    ("a.pdf", b"%PDF-1.4 truncated", "invalid_file"),
    ("a.docx", b"PK not really a zip", "invalid_file"),
    ("noextension", b"text", "unsupported_file"),
    ("a.txt", b"bin\x00ary", "invalid_file"),
    ("a.txt", b"   \n", "invalid_file"),
    ("a.json", b"{", "invalid_file"),
])
def test_files_without_usable_text_are_refused_with_a_code(name: str, data: bytes, code: str) -> None:
    with pytest.raises(ExtractionError) as caught:
        extract_text(name, data)
    assert caught.value.code == code


def test_text_falls_back_from_utf8_to_windows_1252() -> None:
    assert extract_text("a.TXT", "naïve “quotes”".encode("cp1252")) == "naïve “quotes”"
    assert extract_text("a.md", "\ufeffbom".encode()) == "bom"


def test_migration_statements_marked_for_a_dialect_run_only_there() -> None:
    sql = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (x INT);\n"
        "-- dialect: sqlite\n"
        "CREATE VIRTUAL TABLE f USING fts5(x);\n"
        "-- dialect: postgresql\n"
        "CREATE INDEX i ON t USING GIN (x);\n"
        "CREATE TABLE u (y INT);\n"
    )
    assert statements(sql, "sqlite") == ["CREATE TABLE t (x INT)", "CREATE VIRTUAL TABLE f USING fts5(x)",
                                         "CREATE TABLE u (y INT)"]
    assert statements(sql, "postgresql") == ["CREATE TABLE t (x INT)", "CREATE INDEX i ON t USING GIN (x)",
                                             "CREATE TABLE u (y INT)"]


# ---------------------------------------------------------------- Word documents, streamed

W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
RELS = ('<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Target="word/document.xml" '
        'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>'
        '</Relationships>')


def word(body: str) -> bytes:
    """A .docx with `body` as the XML inside <w:body>."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("_rels/.rels", RELS)
        archive.writestr("word/document.xml", f'<w:document xmlns:w="{W}"><w:body>{body}</w:body></w:document>')
    return out.getvalue()


def para(*runs: str) -> str:
    return "<w:p>" + "".join(f"<w:r>{run}</w:r>" for run in runs) + "</w:p>"


def test_word_text_is_paragraphs_and_table_rows_in_document_order() -> None:
    table = ("<w:tbl><w:tr><w:tc>" + para("<w:t>a1</w:t>") + para("<w:t>a2</w:t>") + "</w:tc><w:tc>"
             + para("<w:t>b</w:t>") + "</w:tc></w:tr></w:tbl>")
    body = para("<w:t>Hello</w:t>", "<w:tab/><w:t>you</w:t>") + table + para("<w:t>line</w:t><w:br/><w:t>two</w:t>")
    assert extract_text("a.docx", word(body)) == "Hello\tyou\na1\na2 | b\nline\ntwo"


def test_a_word_document_whose_text_inflates_past_the_limit_is_refused_before_parsing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = word(para("<w:t>x</w:t>") * 1000)
    monkeypatch.setattr(extract, "DOCX_MAX_XML_BYTES", 10_000)
    with pytest.raises(ExtractionError) as caught:
        extract_text("bomb.docx", data)
    assert caught.value.code == "invalid_file" and "inflates to more than" in caught.value.message


def test_extraction_stops_past_the_token_limit_for_every_kind_of_file() -> None:
    words = " ".join(f"w{i}" for i in range(11))
    for name, data in [("a.txt", words.encode()), ("a.html", f"<p>{words}</p>".encode()),
                       ("a.docx", word(para(f"<w:t>{words}</w:t>")))]:
        with pytest.raises(ExtractionError) as caught:
            extract_text(name, data, max_tokens=10)
        assert caught.value.message == "The file has more than 10 tokens, the most a file may have.", name
    assert extract_text("a.txt", words.encode(), max_tokens=11) == words


# ---------------------------------------------------------------- the child process and its limits

AUTO = {"static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}


def chunks_of(path: Path, limits: Limits) -> list[str]:
    return asyncio.run(extract_chunks(path.name, str(path), AUTO, limits))


def test_a_child_process_extracts_and_chunks_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_text("é " * 1000)
    assert chunks_of(path, Limits(512 << 20, 60)) == [("é " * 800).strip(), ("é " * 600).strip()]


def test_a_file_that_needs_more_memory_than_the_limit_fails_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * (10 << 20))  # 50 MB of text: its bytes and its str need twice that
    with pytest.raises(ExtractionError) as caught:
        chunks_of(path, Limits(64 << 20, 60))
    assert (caught.value.code, caught.value.message) == (
        "invalid_file", "The file needs more than 64 MB of memory to be processed.")


def test_a_file_that_takes_longer_than_the_limit_fails_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"." * 4_900_000)  # counting and chunking 4.9 million tokens takes seconds
    with pytest.raises(ExtractionError) as caught:
        chunks_of(path, Limits(1 << 30, 0.3))
    assert caught.value.message == "The file could not be processed within 0.3 seconds."
