"""Object ids: OpenAI's shape, and every character equally likely (no modulo bias)."""

from __future__ import annotations

import re
from collections import Counter

from assistd.domain.ids import new_id


def test_an_id_is_its_prefix_and_24_alphanumerics() -> None:
    assert re.fullmatch(r"run_[A-Za-z0-9]{24}", new_id("run"))
    assert len({new_id("msg") for _ in range(1000)}) == 1000


def test_every_character_of_the_alphabet_is_equally_likely() -> None:
    counts = Counter("".join(new_id("x")[2:] for _ in range(20_000)))  # 480,000 characters
    assert len(counts) == 62
    expected = 480_000 / 62
    # chi-square with 61 degrees of freedom: above 120 happens by chance about once in 10^5
    # runs; a byte taken modulo 62 without dropping 248..255 scores several hundred.
    chi_square = sum((n - expected) ** 2 / expected for n in counts.values())
    assert chi_square < 120
