"""Text extraction, chunking, and dialect-specific migration statements."""

from __future__ import annotations

import pytest

from assistd.execution.ingest import ExtractionError, chunk_text, count_tokens, extract_text, html_text
from assistd.storage.migrate import statements


def test_chunks_are_windows_of_max_tokens_stepping_by_max_minus_overlap() -> None:
    text = " ".join(str(i) for i in range(10))
    assert chunk_text(text, 4, 2) == ["0 1 2 3", "2 3 4 5", "4 5 6 7", "6 7 8 9"]
    assert chunk_text(text, 4, 0) == ["0 1 2 3", "4 5 6 7", "8 9"]
    assert chunk_text("one two", 800, 400) == ["one two"]


def test_a_chunk_keeps_the_original_text_between_its_first_and_last_token() -> None:
    assert chunk_text("a,  b\n\nc d", 3, 0) == ["a,  b", "c d"]
    assert count_tokens("don't stop!") == 5  # don ' t stop !


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
