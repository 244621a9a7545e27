"""pytest fixtures for a real headless Chromium driven by Playwright (registered via
pytest_plugins in tests/conftest.py).

- `chromium`   (session)  Debian's /usr/bin/chromium launched by Playwright (no browser
                          download), with the flags that keep it off the network.
- `artifacts`  (session)  where screenshots go: $POLICYD_TEST_ARTIFACTS or test-artifacts/
                          (gitignored); CI keeps the folder as test output.

Without Chromium or Playwright the tests skip; under CI=true they fail (tests/servers/
requirements.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.requirements import in_ci, require_binaries
from tests.servers.slapd import REPO

CHROMIUM = "/usr/bin/chromium"
#: Without the background-networking flags Chromium keeps trying to reach the internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]
WHY = "browser tests need Debian's chromium (apt-get install chromium) and Playwright"


# Module scope, not session: while Playwright's sync API is started it keeps an event loop
# running in this thread, and every later test's asyncio.run() would fail.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require_binaries(CHROMIUM, why=WHY)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        msg = f"{WHY}: pip install playwright (the dev extra has it)"
        if in_ci():
            pytest.fail(msg + " [CI=true: a missing tier is a failure]")
        pytest.skip(msg)
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    d = Path(os.environ.get("POLICYD_TEST_ARTIFACTS") or REPO / "test-artifacts") / "browser"
    d.mkdir(parents=True, exist_ok=True)
    return d
