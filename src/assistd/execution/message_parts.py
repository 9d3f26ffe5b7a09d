"""The text of an assistant message as it streams, with its annotations sent as OpenAI sends
them: a `file_citation` in the delta that closes its 【…】 marker, a `file_path` in the delta
that ends its `sandbox:/mnt/data/…` path. The SDKs' stream helpers append a delta's
annotations by their `index`, so each is sent exactly once and the list only grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from assistd.domain import objects as o
from assistd.execution import code_tool, file_search
from assistd.lifecycle.records import Step

Obj = dict[str, Any]
PATH_PREFIX = "sandbox:/mnt/data/"


class StreamedText:
    """The text part at content `index` of a message, built from the model's pieces."""

    def __init__(self, steps: Sequence[Step], index: int) -> None:
        self.steps = steps  # the run's steps before this upstream call: what can be cited
        self.index = index
        self.value = ""
        self.annotations: list[Obj] = []
        self._sent: set[tuple[str, int]] = set()
        self._from = 0  # no annotation still to come starts before this: only the rest is scanned
        self._written = code_tool.written_files(steps)  # read once: the text is rescanned on every piece
        self._citable = bool(self._written or o.tool_calls_of(steps, file_search.NAME))

    def feed(self, piece: str, *, final: bool = False) -> Obj | None:
        """Add a piece; the content delta to send (None when there is nothing new).
        `final` says the text is whole: a path at its very end is then complete too."""
        self.value += piece
        new = self._new_annotations(final) if self._citable else []
        if not piece and not new:
            return None
        return {"index": self.index, "type": "text", "text": {"value": piece, "annotations": new}}

    def _new_annotations(self, final: bool) -> list[Obj]:
        start = self._from
        window = self.value[start:]
        found = file_search.citations(window, self.steps) + code_tool.file_paths(
            window, self.steps, settled=final, written=self._written)
        self._from = start + _undecided_from(window)
        new = []
        for annotation in sorted((_shifted(a, start) for a in found), key=lambda a: a["start_index"]):
            key = (annotation["type"], annotation["start_index"])
            if key in self._sent:
                continue
            self._sent.add(key)
            new.append({"index": len(self.annotations), **annotation})
            self.annotations.append(annotation)
        return new

    def part(self) -> Obj:
        """The part as stored: what the deltas sent so far add up to."""
        return {"type": "text", "text": {"value": self.value, "annotations": list(self.annotations)}}


def _shifted(annotation: Obj, offset: int) -> Obj:
    return {**annotation, "start_index": annotation["start_index"] + offset,
            "end_index": annotation["end_index"] + offset}


def _undecided_from(window: str) -> int:
    """Where in `window` (the text's unsettled end) the first mention that may still become or
    change an annotation starts: a 【 not closed yet, a path running to the end, or the room
    for a path prefix cut by the end."""
    candidates = [max(0, len(window) - len(PATH_PREFIX))]
    opened = window.find("【", window.rfind("】") + 1)
    if opened != -1:
        candidates.append(opened)
    paths = list(code_tool.PATH_MENTION.finditer(window))
    last_path = paths[-1] if paths else None
    if last_path is not None and last_path.end() == len(window):
        candidates.append(last_path.start())
    prefix = window.rfind(PATH_PREFIX)
    if prefix != -1 and prefix + len(PATH_PREFIX) == len(window):
        candidates.append(prefix)
    return min(candidates)


def image_delta(index: int, part: Obj) -> Obj:
    """An `image_file` part as a content delta, at its own index."""
    return {"index": index, **part}
