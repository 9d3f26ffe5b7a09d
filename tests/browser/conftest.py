"""A real browser for the console's tests: Playwright (the Python package) driving Debian's chromium.

One browser for the whole session, on the session's shared `server` (one per backend); each test
gets its own context and page. The page's JavaScript errors and console errors fail the test,
and a screenshot of each test's last page goes to test-artifacts/browser/ (ASSISTD_TEST_ARTIFACTS
to change it). ASSISTD_TEST_CHROMIUM names the browser (default /usr/bin/chromium); without it,
or without the playwright package, these tests skip and say why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import Errors, shot_path
from tests.support.server import AssistdServer

CHROMIUM = os.environ.get("ASSISTD_TEST_CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright

    # the same patience for assertions as for actions (the page's default timeout, below): on a
    # loaded machine, or with the suite's parallel workers, a streamed render can take over 5 s
    expect.set_options(timeout=15_000)
    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - the test extra installs it
    HAVE_PLAYWRIGHT = False

PROBLEM = ("the playwright package is not installed" if not HAVE_PLAYWRIGHT
           else None if os.access(CHROMIUM, os.X_OK) else f"no chromium at {CHROMIUM}")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            # one xdist worker runs them all, one after the other, so the browser starts once
            item.add_marker(pytest.mark.xdist_group("browser"))
            if PROBLEM is not None:
                item.add_marker(pytest.mark.skip(reason=f"no browser: {PROBLEM}"))


# Per module, not per session: Playwright's sync API leaves its event loop marked as running in
# this thread while it is open, and any later test calling asyncio.run() would then fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert HAVE_PLAYWRIGHT
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where chromium's own sandbox refuses to start.
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def console(server: AssistdServer, upstream: Any) -> AssistdServer:
    """The shared server, with the upstream's script reset (the page is the client)."""
    return server


@pytest.fixture
def errors() -> Errors:
    return Errors()


@pytest.fixture
def page(browser: Browser, errors: Errors, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(color_scheme="light", viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.on("console", errors.console)
    tab.on("pageerror", errors.page_error)
    yield tab
    try:
        tab.screenshot(path=shot_path(request), full_page=True)
    finally:
        context.close()
    assert not errors.seen, "JavaScript errors on the page:\n" + "\n".join(errors.seen)
