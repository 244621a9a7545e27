"""The sending-limits page (/usage, issue 28) in a real headless Chromium, JavaScript off,
on a phone-sized screen: a user follows the link from the addresses page and reads their own
usage from a real redis-server, counted the way `policyd serve` counts it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.config.quotas import QuotaLimits
from policyd.quotas.service import charges_for
from tests.browser.test_web_browser import PHONE, wait_for
from tests.servers.redis import RedisServer
from tests.servers.slapd import Slapd, free_port
from tests.servers.web import WebServer, ldap_web_config

pytest.importorskip("redis")

pytestmark = [pytest.mark.browser, pytest.mark.slapd, pytest.mark.timeout(120)]


@pytest.fixture
def web(slapd: Slapd, redis_server: RedisServer, tmp_path: Path) -> Iterator[WebServer]:
    port = free_port()
    cfg = ldap_web_config(slapd, tmp_path, port, free_port()) + (
        f'\n[quotas]\nenabled = true\nstore = "{redis_server.url}"\n'
        "[quotas.limits]\nmessages_per_hour = 10\n"
    )
    with WebServer(tmp_path, cfg, port=port) as w:
        yield w


def test_a_user_reads_their_sending_limits_without_javascript(
    web: WebServer, redis_server: RedisServer, chromium: Any, artifacts: Path
) -> None:
    from policyd.quotas.redis_store import RedisStore

    async def sent(n: int) -> None:
        store = RedisStore(redis_server.url, 2.0)
        try:
            for _ in range(n):
                charges = charges_for(QuotaLimits(messages_per_hour=10), 1, 1000)
                assert (await store.charge("alice", charges, True)).allowed
        finally:
            await store.close()

    # (Playwright's sync API holds an event loop in this thread: count in another one)
    t = threading.Thread(target=asyncio.run, args=(sent(3),))
    t.start()
    t.join(30)
    ctx = chromium.new_context(java_script_enabled=False, viewport=PHONE)
    page = ctx.new_page()
    page.goto(web.url + "/")
    page.get_by_label("Login").fill("alice")
    page.get_by_label("Password").fill("alice-pw")
    page.get_by_role("button", name="Log in").click()
    wait_for(page, "**/addresses")
    page.get_by_role("link", name="My sending limits").click()
    wait_for(page, "**/usage")
    assert page.get_by_role("heading", name="My sending limits").is_visible()
    row = page.get_by_role("row", name="Messages per hour")
    assert row.is_visible()
    cells = [c.strip() for c in row.get_by_role("cell").all_inner_texts()]
    assert cells[:3] == ["3", "10", "7"], cells
    assert "temporary error" in page.inner_text("body")
    page.screenshot(path=str(artifacts / "10-usage-phone.png"), full_page=True)
    ctx.close()
