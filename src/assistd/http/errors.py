"""Every error leaves as OpenAI's envelope, with OpenAI's status codes — never a framework's.

The layers below raise domain errors (domain/errors.py); their status codes are given here, in
one table. ApiError is for what only HTTP has words for: keys, body size, content type, 5xx."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from assistd.domain.errors import AssistdError, InvalidRequest, NotFound, StorageFull, invalid
from assistd.http.json_checks import check_json
from assistd.storage.db import DatabaseUnavailable
from assistd.storage.space import disk_full_error, is_disk_full

log = logging.getLogger("assistd.http")


class ApiError(AssistdError):
    """An error with its own status code and type, for what only the HTTP layer knows about."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param, code)
        self.status = status
        self.type = type


# status and type of each domain error. 507 Insufficient Storage, not 503: waiting won't help
# a full disk until someone frees space (which DELETE /v1/files/{id} still can).
STATUS: dict[type[AssistdError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    NotFound: (404, "invalid_request_error"),
    StorageFull: (507, "server_error"),
}


def status_of(error: AssistdError) -> tuple[int, str]:
    """The status code and error type OpenAI would answer `error` with."""
    if isinstance(error, ApiError):
        return error.status, error.type
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500, "server_error"


def error_body(error: AssistdError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": status_of(error)[1], "param": error.param,
                      "code": error.code}}


def error_response(error: AssistdError) -> Response:
    return JSONResponse(error_body(error), status_code=status_of(error)[0])


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "list[", "str", "dict[", "literal[", "int", "float", "bool")):
            out += f".{part}" if out else part
    return out


def _json_kind(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return "null" if value is None else names.get(type(value), "a value")


def from_validation(exc: ValidationError) -> InvalidRequest:
    """The first problem pydantic found, worded like OpenAI's validation errors."""
    first = exc.errors(include_url=False)[0]
    param = _param(tuple(first["loc"])) or None
    kind = first["type"]
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind in ("model_type", "model_attributes_type", "dict_type"):  # not our class names
        return invalid(f"Invalid type for '{param}': expected an object, but got "
                       f"{_json_kind(first['input'])} instead.", param, "invalid_type")
    if kind.endswith("_type") or kind in ("model_attributes_type", "dict_type", "list_type"):
        return invalid(f"Invalid type for '{param}': {first['msg']}.", param, "invalid_type")
    message = first["msg"].removeprefix("Value error, ")
    return invalid(f"Invalid value for '{param}': {message}.", param, "invalid_value")


async def api_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AssistdError)
    return error_response(exc)


async def validation_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return error_response(from_validation(exc))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    return error_response(ApiError(exc.status_code, message))


RETRY_AFTER_SECONDS = 5  # what a 503 asks a client to wait; a database restart takes about that


def unavailable_response(message: str) -> Response:
    """503 with Retry-After: the request was fine, assistd can't serve it right now."""
    response = error_response(ApiError(503, message, type="server_error"))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def database_unavailable_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, DatabaseUnavailable)
    log.warning("answered 503: the database is unavailable (%s)", exc)
    return unavailable_response("The database is unavailable. Please retry your request after a brief wait.")


async def unexpected_handler(request: Request, exc: Exception) -> Response:
    """A 500, except on a full disk (any write can meet one): then a 507 that says so."""
    if is_disk_full(exc):
        log.error("%s %s: a write failed, the disk is full: %s", request.method, request.url.path, exc)
        return error_response(disk_full_error())
    log.exception("unexpected error", exc_info=exc)
    return error_response(ApiError(500, "The server had an error while processing your request.", type="server_error"))


async def read_json(request: Request) -> dict[str, object]:
    """The request body as a JSON object; an empty body counts as `{}`."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        ) from exc
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    check_json(body)
    return body
