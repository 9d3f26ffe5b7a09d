"""Object ids shaped like OpenAI's: a type prefix and 24 random alphanumerics."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def now() -> int:
    """Unix seconds, the unit of every timestamp in the API."""
    return int(time.time())
