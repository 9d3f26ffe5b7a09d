"""Validate objects against OpenAI's published OpenAPI schemas (tests/reference/openai-openapi.yaml).

`assert_matches_schema(obj, name)` takes a JSON object (or an openai SDK model) and the name of a
schema under `#/components/schemas`. The Assistants v2 names are:

    AssistantObject, ListAssistantsResponse, DeleteAssistantResponse,
    ThreadObject, DeleteThreadResponse,
    MessageObject, ListMessagesResponse, DeleteMessageResponse, MessageDeltaObject,
    RunObject, ListRunsResponse,
    RunStepObject, ListRunStepsResponse, RunStepDeltaObject

(also useful: AssistantStreamEvent, RunToolCallObject, CreateChatCompletionStreamResponse,
CreateChatCompletionResponse, Error).

The document says `openapi: 3.1.0` but still writes OpenAPI 3.0's `nullable: true` and boolean
`exclusiveMinimum`; both are rewritten into JSON Schema 2020-12 here before validating. Loading the
3 MB YAML takes about a second with libyaml, so it is done once per process.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Obj = dict[str, Any]

ASSISTANTS_SCHEMAS = (
    "AssistantObject", "ListAssistantsResponse", "DeleteAssistantResponse",
    "ThreadObject", "DeleteThreadResponse",
    "MessageObject", "ListMessagesResponse", "DeleteMessageResponse", "MessageDeltaObject",
    "RunObject", "ListRunsResponse",
    "RunStepObject", "ListRunStepsResponse", "RunStepDeltaObject",
)

_REPO = Path(__file__).resolve().parents[2]
# A copy is kept in tests/reference (see its README); ASSISTD_OPENAPI_SPEC points elsewhere.
_CANDIDATES = (_REPO / "tests" / "reference" / "openai-openapi.yaml",)

# Keywords whose value is one schema, a list of schemas, or a map of name → schema. Everything
# else (enum, example, default, properties' *names*…) is data and must not be rewritten.
_SCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
           "unevaluatedItems", "unevaluatedProperties", "additionalItems")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_COMBINATORS = ("$ref", "allOf", "anyOf", "oneOf")


def spec_path() -> Path:
    override = os.environ.get("ASSISTD_OPENAPI_SPEC")
    for candidate in ((Path(override),) if override else _CANDIDATES):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"OpenAI's OpenAPI spec not found at {', '.join(map(str, _CANDIDATES))}")


def to_json_schema(node: Any) -> Any:
    """Rewrite one OpenAPI 3.0-flavoured schema (and its subschemas) as JSON Schema 2020-12."""
    if not isinstance(node, dict):
        return node
    node = _hoist_nullable_member(node)
    out: Obj = {}
    for key, value in node.items():
        if key in _SCHEMA:
            out[key] = to_json_schema(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [to_json_schema(v) for v in value]
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: to_json_schema(v) for name, v in value.items()}
        else:
            out[key] = value
    _fix_exclusive_bounds(out)
    if out.pop("nullable", False) is not True:
        return out
    return _allow_null(out)


def _hoist_nullable_member(node: Obj) -> Obj:
    """`allOf: [{$ref: X}, {nullable: true}]` (the 3.0 idiom for a nullable ref) → nullable X.

    Converted member by member, the bare `{nullable: true}` would allow null only on its own
    branch, and the allOf would still reject null; the spec means "X or null".
    """
    members = node.get("allOf")
    if not isinstance(members, list):
        return node
    bare = [m for m in members if isinstance(m, dict) and m.get("nullable") is True
            and set(m) <= {"nullable", "description", "title"}]
    if not bare:
        return node
    return {**node, "allOf": [m for m in members if m not in bare], "nullable": True}


def _fix_exclusive_bounds(schema: Obj) -> None:
    """3.0's `minimum: x, exclusiveMinimum: true` is 2020-12's `exclusiveMinimum: x`."""
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(schema.get(exclusive), bool) and schema.pop(exclusive) and bound in schema:
            schema[exclusive] = schema.pop(bound)


def _allow_null(schema: Obj) -> Obj:
    kind = schema.get("type")
    if isinstance(kind, str) and not any(k in schema for k in _COMBINATORS):
        # Widen in place, keeping every other constraint (they only apply to their own type).
        schema["type"] = [kind, "null"]
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    # A $ref or a combinator: null is one more alternative. Annotations stay outside.
    notes: Obj = {k: schema.pop(k) for k in ("description", "title", "default", "deprecated") if k in schema}
    return {"anyOf": [schema, {"type": "null"}], **notes}


@functools.cache
def _document() -> Obj:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~1 s instead of ~15 s
    with spec_path().open("rb") as handle:
        spec = yaml.load(handle, Loader=loader)
    schemas = spec["components"]["schemas"]
    return {"components": {"schemas": {name: to_json_schema(s) for name, s in schemas.items()}}}


def schema_names() -> list[str]:
    return sorted(_document()["components"]["schemas"])


def schema(name: str) -> Obj:
    """The converted schema (its refs still point into the document)."""
    schemas = _document()["components"]["schemas"]
    if name not in schemas:
        raise KeyError(f"no schema named {name!r} in {spec_path()}")
    result: Obj = schemas[name]
    return result


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema(name)  # a clear KeyError for unknown names
    # The root carries the whole document so `#/components/schemas/...` refs resolve in it.
    root = {**_document(), "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(root)


def schema_errors(obj: Any, schema_name: str) -> list[str]:
    """Every violation as "path: message" (empty when `obj` fits)."""
    errors = sorted(validator(schema_name).iter_errors(_plain(obj)), key=lambda e: list(e.absolute_path))
    return [f"{_where(e)}: {e.message}" for e in errors]


def assert_matches_schema(obj: Any, schema_name: str) -> None:
    """Raise AssertionError, naming the path of the most relevant violation, unless `obj` fits.

    SDK objects are checked as the server sent them (fields the server left out stay out).
    """
    error = jsonschema.exceptions.best_match(validator(schema_name).iter_errors(_plain(obj)))
    if error is not None:
        raise AssertionError(f"{schema_name} violated at {_where(error)}: {error.message}")


def _plain(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return obj


def _where(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"
