"""JSON out through orjson writes what the json module wrote, and takes what orjson refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from assistd.domain.jsontext import dumps, dumps_bytes


def by_json_module(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("value", [
    {"id": "run_1", "object": "thread.run", "created_at": 1795348708, "metadata": {}, "usage": None},
    {"text": "é ü 漢字 \u2028 \x00 \" \\ /", "list": [1, 2.5, -0.0, True, False, None]},
    {"deep": [[{"a": [{"b": "c"}]}]], "big": 2**63 - 1, "small": -(2**63)},
])
def test_objects_are_written_as_the_json_module_wrote_them(value: Any) -> None:
    assert dumps(value) == by_json_module(value)
    assert dumps_bytes(value) == by_json_module(value).encode()


@pytest.mark.parametrize("value", [{"huge": 10**30}, {1: "int key"}, {"nested": [{"x": -(10**25)}]}])
def test_what_orjson_refuses_is_written_by_the_json_module(value: Any) -> None:
    assert dumps(value) == by_json_module(value)
    assert json.loads(dumps_bytes(value)) == json.loads(by_json_module(value))


def test_nan_and_infinity_become_null_which_json_can_spell() -> None:
    assert json.loads(dumps({"a": math.nan, "b": math.inf})) == {"a": None, "b": None}
