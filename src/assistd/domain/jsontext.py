"""JSON text out: compact, UTF-8 as is, written by orjson.

Every event, stored column and response body is encoded here. orjson writes the same text as
`json.dumps(value, separators=(",", ":"), ensure_ascii=False)` for the objects assistd makes
(a float may be spelled differently, never valued differently), several times faster; NaN
and infinities become `null` (JSON has no spelling for them). What orjson refuses (integers
past 64 bits, keys that are not strings, lone surrogates) goes through the json module as
before. Reading stays the json module's: orjson reads integers past 64 bits as floats.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
