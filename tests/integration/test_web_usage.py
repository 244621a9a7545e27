"""The self-service page shows a logged-in user their own sending quota (issue 28), over
HTTP against `policyd web`, a real slapd and a real redis-server: used, limit, left and reset
time per limit from the shared store, what happens at a limit, a suspension; only the user's
own counters; with the in-memory store the page says it cannot show them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policyd.config.quotas import QuotaLimits
from policyd.quotas.service import charges_for
from tests.servers.redis import RedisServer
from tests.servers.slapd import Slapd, free_port
from tests.servers.web import Client, WebServer, ldap_web_servers

pytest.importorskip("aiohttp")
pytest.importorskip("redis")

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(90)]

LIMITS = QuotaLimits(messages_per_hour=5, recipients_per_day=100, recipients_per_message=20)

Start = Callable[[str], WebServer]


@pytest.fixture
def start(slapd: Slapd, tmp_path: Path) -> Iterator[Start]:
    with ldap_web_servers(slapd, tmp_path) as go:
        yield lambda quotas: go(extra=quotas)


def quotas(store: str) -> str:
    return (
        f'[quotas]\nenabled = true\nstore = "{store}"\n'
        "[quotas.limits]\nmessages_per_hour = 5\nrecipients_per_day = 100\n"
        "recipients_per_message = 20\n"
    )


def logged_in(w: WebServer, user: str, password: str) -> Client:
    c = Client(w.url)
    token = c.get("/login").form_value("csrf")
    r = c.post("/login", {"csrf": token, "user": user, "password": password})
    assert r.status == 303, r.status
    return c


def send(url: str, login: str, messages: int, recipients: int) -> None:
    """What `policyd serve` counts at END-OF-MESSAGE: the same charges, in the same store."""
    from policyd.quotas.redis_store import RedisStore

    async def go() -> None:
        store = RedisStore(url, 2.0)
        try:
            for _ in range(messages):
                out = await store.charge(login, charges_for(LIMITS, recipients, 1000), True)
                assert out.allowed
        finally:
            await store.close()

    asyncio.run(go())


def cells(html: str, label: str) -> list[str]:
    row = re.search(rf"<th scope=\"row\">{label}</th>(.*?)</tr>", html, re.S)
    assert row is not None, html
    return [c.strip() for c in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)]


def test_a_user_sees_their_own_usage_from_the_shared_store(
    start: Start, redis_server: RedisServer
) -> None:
    w = start(quotas(redis_server.url))
    send(redis_server.url, "alice", 2, 7)
    send(redis_server.url, "bob", 4, 1)
    page = logged_in(w, "alice", "alice-pw").get("/usage")
    assert page.status == 200
    html = page.text
    used, limit, left, resets = cells(html, "Messages per hour")
    assert (used, limit, left) == ("2", "5", "3")
    assert re.fullmatch(r"\d+m", resets), resets  # back to zero in about 24 minutes
    assert cells(html, "Recipients per day")[:3] == ["14", "100", "86"]
    assert "at most 20 recipients" in html
    assert "temporary error" in html  # what happens at a limit
    assert "suspended" not in html
    # bob's counters are his: he sees 4, alice's page never showed them
    assert cells(logged_in(w, "bob", "bob-pw").get("/usage").text, "Messages per hour")[0] == "4"
    # not logged in: the login page
    assert Client(w.url).get("/usage").status == 303


def test_a_suspended_user_is_told(start: Start, redis_server: RedisServer) -> None:
    from policyd.quotas.redis_store import RedisStore

    async def suspend() -> None:
        store = RedisStore(redis_server.url, 2.0)
        try:
            await store.suspend("alice", "test")
        finally:
            await store.close()

    asyncio.run(suspend())
    w = start(quotas(redis_server.url))
    html = logged_in(w, "alice", "alice-pw").get("/usage").text
    assert "Sending from your login is suspended" in html and "held for review" in html


def test_with_the_in_memory_store_the_page_says_it_cannot_show_usage(start: Start) -> None:
    w = start(quotas("none"))
    c = logged_in(w, "alice", "alice-pw")
    assert 'href="/usage"' in c.get("/addresses").text
    html = c.get("/usage").text
    assert "cannot show your usage" in html
    assert "<table" not in html


def test_the_store_away_says_so_and_shows_no_numbers(start: Start) -> None:
    w = start(quotas(f"redis://127.0.0.1:{free_port()}/0"))  # nothing listens there
    html = logged_in(w, "alice", "alice-pw").get("/usage").text
    assert "cannot be shown right now" in html and "<table" not in html
    assert "quota usage not shown: store unavailable" in w.log_text()
