"""One error hierarchy: the layers below HTTP raise domain errors, and http/errors.py alone gives
them OpenAI's status codes and envelope."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from assistd.domain.errors import AssistdError, invalid, not_found
from assistd.http.errors import ApiError, error_response
from assistd.storage.pages import UnknownCursor
from assistd.storage.space import disk_full_error

SRC = Path(__file__).resolve().parents[2] / "src/assistd"


def answer(error: AssistdError) -> tuple[int, dict[str, object]]:
    response = error_response(error)
    return response.status_code, json.loads(bytes(response.body))["error"]


def test_each_domain_error_gets_openais_status_and_envelope() -> None:
    assert answer(invalid("Bad thing.", "limit", "invalid_value")) == (
        400, {"message": "Bad thing.", "type": "invalid_request_error", "param": "limit", "code": "invalid_value"})
    assert answer(not_found("thread", "thread_x")) == (
        404, {"message": "No thread found with id 'thread_x'.", "type": "invalid_request_error", "param": None,
              "code": None})
    status, body = answer(disk_full_error())
    assert (status, body["type"], body["code"]) == (507, "server_error", "disk_full")
    status, body = answer(UnknownCursor("after", "msg_x"))
    assert (status, body["param"]) == (400, "after")


def test_an_http_error_keeps_its_own_status_and_type() -> None:
    status, body = answer(ApiError(401, "No key.", code="invalid_api_key"))
    assert (status, body["type"], body["code"]) == (401, "invalid_request_error", "invalid_api_key")


def test_nothing_below_http_imports_it_or_builds_http_errors() -> None:
    for layer in ("domain", "storage", "execution"):
        for path in (SRC / layer).rglob("*.py"):
            tree = ast.parse(path.read_text())
            imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
            imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
            assert not [m for m in imported if m.startswith(("assistd.http", "starlette"))], path
            assert "ApiError" not in path.read_text(), path
