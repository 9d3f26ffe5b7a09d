"""What the browser tests share besides fixtures: the error collector and where screenshots go."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("ASSISTD_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts")) / "browser"


# Chrome logs every failed fetch as a console error. GET /v1/models may not exist (the console
# then offers no model suggestions); that 404 alone is expected.
EXPECTED = [re.compile(r"/v1/models$")]


class Errors:
    """Uncaught exceptions and console errors of the pages in one test."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.expected = list(EXPECTED)

    def allow_failed_request(self, url_pattern: str) -> None:
        """A test that provokes an API error allows the browser's log line for that request."""
        self.expected.append(re.compile(url_pattern))

    def console(self, message: Any) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        if "Failed to load resource" in message.text and any(p.search(url) for p in self.expected):
            return
        self.seen.append(f"console: {message.text} ({url})")

    def page_error(self, error: Any) -> None:
        self.seen.append(f"pageerror: {error}")


def shot_path(request: pytest.FixtureRequest, suffix: str = "") -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    return ARTIFACTS / f"{name}{suffix}.png"
