"""A blocked event loop is measured, counted and logged with what it was running."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from assistd.execution import loop_lag


def block_the_loop_for_a_while() -> None:
    time.sleep(0.3)


def test_a_blocked_loop_shows_in_the_figures_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> dict[str, float]:
        loop_lag.start()
        try:
            await asyncio.sleep(0.1)
            block_the_loop_for_a_while()
            await asyncio.sleep(0.1)
            return loop_lag.figures()
        finally:
            await loop_lag.stop()

    with caplog.at_level(logging.WARNING, logger="assistd.loop_lag"):
        figures = asyncio.run(scenario())
    assert figures["max_seconds"] >= 0.25
    assert figures["recent_max_seconds"] >= 0.25
    assert figures["stalls_total"] >= 1
    assert any("stalled for" in r.getMessage() for r in caplog.records)
    assert any("block_the_loop_for_a_while" in r.getMessage() for r in caplog.records)
    assert loop_lag.figures()["max_seconds"] == 0.0  # stopped: nothing measured any more
