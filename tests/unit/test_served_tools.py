"""Pure pieces of the tools assistd answers itself: the streamed code input and rank fusion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assistd.execution.code_tool import InputStream, code_of
from assistd.execution.retrieval import fuse
from assistd.storage.vector_stores import top_similar

CODE = 'print("tab\\there")\nname = "Zoë \\u2603"\n# quote " and backslash \\\\ ☃ 😀'


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_streamed_code_arguments_decode_to_the_code_whatever_the_split(size: int) -> None:
    arguments = json.dumps({"code": CODE})
    stream = InputStream()
    pieces = [stream.feed(arguments[i:i + size]) for i in range(0, len(arguments), size)]
    assert "".join(pieces) == CODE and code_of(arguments) == CODE


def test_code_of_takes_bare_text_when_the_arguments_are_not_json() -> None:
    assert code_of("print(1)") == "print(1)"


def test_fusion_puts_what_both_lists_rank_high_first_and_scores_it_one() -> None:
    fused = fuse([[1, 2, 3], [1, 3, 4]])
    assert [item for item, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1.0) and all(0 < score <= 1 for _, score in fused)


def test_top_similar_orders_rows_by_their_best_cosine_to_any_query() -> None:
    matrix = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[0, 1]], dtype=np.float32)
    assert [row for row, _ in top_similar(matrix, queries, 2)] == [1, 2]
    assert top_similar(matrix, np.zeros((1, 3), np.float32), 2) == []  # other dimensions: nothing
