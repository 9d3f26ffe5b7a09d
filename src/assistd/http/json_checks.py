"""Checks on a parsed JSON body that no model can express: depth and characters no store keeps.

`json.loads` accepts a lone surrogate (`"\\ud800"`), which no UTF-8 encoder will write, and
`\\u0000`, which PostgreSQL's text and jsonb refuse; both are refused here for every string and
key, on both backends alike, naming where in the body they were.
"""

from __future__ import annotations

import re
from typing import Any

from assistd.domain.errors import InvalidRequest, invalid

MAX_DEPTH = 64  # OpenAI limits JSON schemas to a few levels; nothing legitimate nests this far
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _where(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:  # a key may be the bad string itself: shown escaped, as the error goes out as UTF-8
            name = part.encode("utf-8", "backslashreplace").decode()
            out += f".{name}" if out else name
    return out


def _string_problem(text: str, path: tuple[str | int, ...]) -> InvalidRequest | None:
    found = _BAD_CHARACTER.search(text)
    if found is None:
        return None
    what = "a NUL character" if found.group() == "\x00" else "a lone UTF-16 surrogate"
    param = _where(path) or None
    return invalid(f"Invalid value for '{param}': the string contains {what}.", param, "invalid_value")


def check_json(body: Any) -> None:
    """Raise a 400 naming the first string with a lone surrogate or NUL, or a too-deep nesting."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            param = _where(path[:1]) or None
            raise invalid(f"Invalid value for '{param}': JSON nested more than {MAX_DEPTH} levels deep.",
                          param, "invalid_value")
        if isinstance(value, str):
            if problem := _string_problem(value, path):
                raise problem
        elif isinstance(value, dict):
            for key, item in value.items():
                if problem := _string_problem(key, (*path, key)):
                    raise problem
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
