"""Validate responses against OpenAI's published OpenAPI schemas (../shared/reference).

Schemas used by the tests: RunObject, AssistantObject, ThreadObject, MessageObject,
RunStepObject, MessageDeltaObject, RunStepDeltaObject, ListAssistantsResponse,
ListRunsResponse, ListMessagesResponse, ListRunStepsResponse, DeleteAssistantResponse,
DeleteThreadResponse, DeleteMessageResponse. The spec is OpenAPI 3.1 but writes 3.0's
`nullable: true`, which is turned into JSON Schema's `null` type here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / "openai-openapi.yaml"


def _find_spec() -> Path:
    for candidate in (SPEC_PATH, Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "openai-openapi.yaml"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"OpenAI's OpenAPI spec not found at {SPEC_PATH}")


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is not True:
        return node
    if isinstance(node.get("type"), str) and not any(k in node for k in ("$ref", "allOf", "anyOf", "oneOf")):
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
        return node
    return {"anyOf": [node, {"type": "null"}]}


@functools.cache
def _document() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with _find_spec().open() as handle:
        spec = yaml.load(handle, Loader=loader)
    return {"components": {"schemas": _nullable(spec["components"]["schemas"])}}


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    document = _document()
    if name not in document["components"]["schemas"]:
        raise KeyError(f"no schema named {name!r} in the spec")
    schema = {**document, "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema)


def assert_matches_schema(obj: Any, schema_name: str) -> None:
    """Raise AssertionError, with the path of the first violation, unless `obj` fits.

    SDK objects are checked as the server sent them (fields the server left out stay out).
    """
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json", exclude_unset=True)
    error = jsonschema.exceptions.best_match(_validator(schema_name).iter_errors(obj))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise AssertionError(f"{schema_name} violated at {where}: {error.message}")
