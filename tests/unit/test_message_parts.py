"""The streamed text of a message: each annotation is sent once, in the piece that completes it."""

from __future__ import annotations

from typing import Any

from assistd.execution.message_parts import StreamedText
from assistd.lifecycle.records import Step
from tests.support import records

Obj = dict[str, Any]


def steps_with(search_results: list[Obj] | None = None, written: str = "") -> list[Step]:
    calls: list[Obj] = []
    if search_results is not None:
        calls.append({"id": "call_s", "type": "file_search", "file_search": {"results": search_results}})
    if written:
        calls.append({"id": "call_c", "type": "code_interpreter", "code_interpreter": {
            "input": "", "outputs": [{"type": "logs", "logs": written}]}})
    return [records.step({"type": "tool_calls", "tool_calls": calls})]


def feed_all(text: StreamedText, pieces: list[str]) -> list[list[Obj]]:
    sent = [(text.feed(p) or {"text": {"annotations": []}})["text"]["annotations"] for p in pieces]
    final = text.feed("", final=True)
    return [*sent, final["text"]["annotations"] if final else []]


def test_a_path_is_annotated_when_a_later_piece_ends_it_and_never_twice() -> None:
    text = StreamedText(steps_with(written="[file written: sandbox:/mnt/data/a.csv (file-abc)]"), 1)
    sent = feed_all(text, ["see sandbox:/mnt/data/", "a.csv", " now", " and more"])
    assert [len(s) for s in sent] == [0, 0, 1, 0, 0]
    assert sent[2][0] == {"index": 0, "type": "file_path", "text": "sandbox:/mnt/data/a.csv",
                          "file_path": {"file_id": "file-abc"}, "start_index": 4, "end_index": 27}
    assert text.part()["text"]["annotations"] == [{k: v for k, v in sent[2][0].items() if k != "index"}]


def test_a_path_that_may_still_grow_waits_for_the_end_of_the_text() -> None:
    text = StreamedText(steps_with(written="[file written: sandbox:/mnt/data/a.csv (file-abc)]"), 0)
    sent = feed_all(text, ["at sandbox:/mnt/data/a.csv", "."])
    assert [len(s) for s in sent] == [0, 0, 1]
    assert sent[2][0]["end_index"] == len("at sandbox:/mnt/data/a.csv")


def test_a_citation_is_sent_with_its_closing_bracket() -> None:
    results = [{"file_id": "file-q", "file_name": "q.txt", "score": 1.0}]
    text = StreamedText(steps_with(results), 0)
    sent = feed_all(text, ["It is so 【0", "†q.t", "xt】", "."])
    assert [len(s) for s in sent] == [0, 0, 1, 0, 0]
    assert sent[2][0]["file_citation"] == {"file_id": "file-q"} and sent[2][0]["start_index"] == 9


def test_nothing_is_annotated_without_searches_or_written_files() -> None:
    text = StreamedText([], 0)
    assert feed_all(text, ["sandbox:/mnt/data/a.csv 【0†q.txt】"]) == [[], []]


def test_however_the_text_is_cut_the_annotations_are_those_of_the_whole_text() -> None:
    import random

    from assistd.execution import code_tool, file_search

    results = [{"file_id": "file-q", "file_name": "q.txt", "score": 1.0},
               {"file_id": "file-r", "file_name": "r.md", "score": 0.5}]
    steps = steps_with(results, written="[file written: sandbox:/mnt/data/a.csv (file-a)]\n"
                                        "[file written: sandbox:/mnt/data/a.csv.bak (file-b)]")
    texts = ["See sandbox:/mnt/data/a.csv, 【0†q.txt】 and (sandbox:/mnt/data/a.csv.bak) 【1†r.md】.",
             "【1†r.md】【0†q.txt】sandbox:/mnt/data/a.csv",
             "an 【unclosed bracket then 【0†q.txt】 and sandbox:/mnt/data/a.csv.",
             "sandbox:/mnt/data/sandbox:/mnt/data/a.csv then sandbox:/mnt/data/a.csv"]
    rng = random.Random(7)
    for text in texts:
        whole = sorted(file_search.citations(text, steps) + code_tool.file_paths(text, steps),
                       key=lambda a: a["start_index"])
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(12, len(text) - 1))))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            streamed = StreamedText(steps, 0)
            sent = [a for batch in feed_all(streamed, pieces) for a in batch]
            assert [a["index"] for a in sent] == list(range(len(sent)))
            assert sorted(streamed.annotations, key=lambda a: a["start_index"]) == whole, (text, pieces)
