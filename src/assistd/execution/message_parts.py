"""The text of an assistant message as it streams, with its annotations sent as OpenAI sends
them: a `file_citation` in the delta that closes its 【…】 marker, a `file_path` in the delta
that ends its `sandbox:/mnt/data/…` path. The SDKs' stream helpers append a delta's
annotations by their `index`, so each is sent exactly once and the list only grows.
"""

from __future__ import annotations

from typing import Any

from assistd.domain import objects as o
from assistd.execution import code_tool, file_search

Obj = dict[str, Any]


class StreamedText:
    """The text part at content `index` of a message, built from the model's pieces."""

    def __init__(self, steps: list[Obj], index: int) -> None:
        self.steps = steps  # the run's steps before this upstream call: what can be cited
        self.index = index
        self.value = ""
        self.annotations: list[Obj] = []
        self._sent: set[tuple[str, int]] = set()
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
        found = file_search.citations(self.value, self.steps) + code_tool.file_paths(
            self.value, self.steps, settled=final, written=self._written)
        new = []
        for annotation in sorted(found, key=lambda a: a["start_index"]):
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


def image_delta(index: int, part: Obj) -> Obj:
    """An `image_file` part as a content delta, at its own index."""
    return {"index": index, **part}
