"""Object ids shaped like OpenAI's: a type prefix and 24 random alphanumerics."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits
ID_CHARS = 24
# A random byte below 248 (4 × 62) taken modulo 62 is each character equally often; bytes at
# or above it are dropped. One read of the system's randomness per id: `secrets.choice` read
# it once per character: 24 system calls, 44 us an id against 6 us (and a run's creation makes several).
_UNBIASED = 256 - 256 % len(_ALPHABET)


def new_id(prefix: str) -> str:
    chars: list[str] = []
    while len(chars) < ID_CHARS:
        chars += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(ID_CHARS + 8) if b < _UNBIASED]
    return prefix + "_" + "".join(chars[:ID_CHARS])


def now() -> int:
    """Unix seconds, the unit of every timestamp in the API."""
    return int(time.time())
