"""The errors assistd raises below its HTTP layer, in OpenAI's terms: a message for the client,
the parameter at fault and a code. http/errors.py answers each kind with OpenAI's status code
and `{"error": {...}}` envelope; nothing here knows about HTTP."""

from __future__ import annotations


class AssistdError(Exception):
    """A request refused, or one the server cannot serve; `message` is the client's to read."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(AssistdError):
    """Bad input, or an object whose state does not allow the request."""


class NotFound(AssistdError):
    """No such object (or none where the request looked for it)."""


class StorageFull(AssistdError):
    """The data disk is full: nothing more can be stored until space is freed."""


def invalid(message: str, param: str | None = None, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param, code)


def not_found(kind: str, object_id: str) -> NotFound:
    return NotFound(f"No {kind} found with id '{object_id}'.")
