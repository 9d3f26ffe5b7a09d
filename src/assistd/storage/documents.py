"""Rows that keep an object as JSON in `data`, with its `metadata` in a column beside it
(assistants, threads, messages, run steps): the object from a row, and the columns from an object."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from assistd.domain import objects as o


def from_row(row: Mapping[str, Any]) -> Any:
    obj = json.loads(row["data"])
    obj["metadata"] = json.loads(row["metadata"])
    return obj


def body(obj: Mapping[str, Any]) -> str:
    """The `data` column: the object without its metadata."""
    return o.dumps({k: v for k, v in obj.items() if k != "metadata"})


def split(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The `data` and `metadata` columns."""
    return body(obj), o.dumps(obj.get("metadata") or {})
