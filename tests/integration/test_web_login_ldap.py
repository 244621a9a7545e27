"""Logging in to `policyd web` with a password: a bind as the user's own entry in a real slapd.

Same answer for an unknown login and a wrong password; throttling per client address and per
login; a new session id at login; logout ends the session; the password reaches no log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.slapd import Slapd
from tests.servers.web import Client, Reply, WebServer, ldap_web_servers

pytest.importorskip("aiohttp")

pytestmark = pytest.mark.slapd

Start = Callable[..., WebServer]


@pytest.fixture
def start(slapd: Slapd, tmp_path: Path) -> Iterator[Start]:
    with ldap_web_servers(slapd, tmp_path) as go:
        yield go


def login(c: Client, user: str, password: str) -> Reply:
    token = c.get("/login").form_value("csrf")
    return c.post("/login", {"csrf": token, "user": user, "password": password})


def normalised(r: Reply) -> str:
    """The page without what differs by design: the CSRF token and the echoed login."""
    text = re.sub(r'name="csrf" value="[^"]*"', "CSRF", r.text)
    return re.sub(r'name="user" type="text" value="[^"]*"', "USER", text)


def test_the_right_password_logs_in_with_a_new_session_id(start: Start) -> None:
    w = start()
    c = Client(w.url)
    c.cookies["policyd-session"] = "chosen-by-an-attacker-" + "x" * 30
    r = login(c, "alice", "alice-pw")
    assert r.status == 303 and r.header("Location") == "/addresses"
    sid = c.cookies["policyd-session"]
    assert sid and not sid.startswith("chosen-by-an-attacker")
    page = c.get("/addresses")
    assert page.status == 200 and "Logged in as <strong>alice</strong>" in page.text
    assert "alice@example.org" in page.text  # from the directory


def test_unknown_login_and_wrong_password_get_the_same_answer(start: Start) -> None:
    w = start()
    wrong = login(Client(w.url), "alice", "not-her-password")
    unknown = login(Client(w.url), "nosuchuser", "whatever")
    empty = login(Client(w.url), "alice", "")  # an "unauthenticated bind" must not pass
    star = login(Client(w.url), "*", "alice-pw")  # filter injection finds no one
    for r in (wrong, unknown, empty, star):
        assert r.status == 401 and "Wrong login or password." in r.text
        assert "policyd-session" not in r.headers.get("Set-Cookie", "")
    assert normalised(wrong) == normalised(unknown)


def test_logins_for_one_account_are_throttled_even_with_the_right_password(start: Start) -> None:
    w = start(
        "login_max_failures_per_login = 3\nlogin_max_failures_per_ip = 100\nlogin_window = 600\n"
    )
    for _ in range(3):
        assert login(Client(w.url), "alice", "bad").status == 401
    r = login(Client(w.url), "alice", "alice-pw")
    assert r.status == 429 and "Too many failed logins. Please wait 10 minutes" in r.text
    # an unknown login is throttled the same way (no enumeration through the throttle)
    for _ in range(3):
        assert login(Client(w.url), "ghost", "bad").status == 401
    ghost = login(Client(w.url), "ghost", "bad")
    assert ghost.status == 429 and normalised(ghost) == normalised(r)
    # another account from the same address is not affected
    assert login(Client(w.url), "dave", "dave-pw").status == 303


def test_logins_from_one_client_address_are_throttled(start: Start) -> None:
    w = start("login_max_failures_per_ip = 4\nlogin_max_failures_per_login = 100\n")
    for i in range(4):
        assert login(Client(w.url), f"user{i}", "bad").status == 401
    assert login(Client(w.url), "dave", "dave-pw").status == 429
    other = Client(w.url, source="127.0.0.3")
    assert login(other, "dave", "dave-pw").status == 303


def test_logout_ends_the_session_on_the_server(start: Start) -> None:
    w = start()
    c = Client(w.url)
    assert login(c, "bob", "bob-pw").status == 303
    sid = c.cookies["policyd-session"]
    token = c.get("/addresses").form_value("csrf")
    r = c.post("/logout", {"csrf": token})
    assert r.status == 303 and r.header("Location") == "/login"
    replay = Client(w.url)
    replay.cookies["policyd-session"] = sid
    r = replay.get("/addresses")
    assert r.status == 303 and r.header("Location") == "/login"


def test_the_idle_timeout_ends_a_session(start: Start) -> None:
    import time

    w = start("session_idle_timeout = 1.0\n")
    c = Client(w.url)
    assert login(c, "bob", "bob-pw").status == 303
    assert c.get("/addresses").status == 200
    time.sleep(1.3)
    r = c.get("/addresses")
    assert r.status == 303 and r.header("Location") == "/login"


def test_the_password_reaches_no_log_and_hostile_logins_are_escaped(start: Start) -> None:
    w = start('[logging]\nlevel = "debug"\n')  # even at debug level
    secret = "Sup3r-Secret-Pass"
    login(Client(w.url), "alice", secret)
    login(Client(w.url), "carol", "carol-pw")
    r = login(Client(w.url), '<script>alert("x")</script>', secret)
    assert r.status == 401
    assert "<script>alert" not in r.text and "&lt;script&gt;" in r.text
    log = w.log_text()
    assert "logged in" in log  # the log is there ...
    assert secret not in log and "carol-pw" not in log  # ... without passwords


def test_login_binds_over_ldaps_with_the_configured_ca(start: Start, slapd: Slapd) -> None:
    assert slapd.pki is not None
    good = start(server=slapd.ldaps_url, ldap=f'ca_file = "{slapd.pki.ca_cert}"')
    assert login(Client(good.url), "alice", "alice-pw").status == 303
    # the wrong CA: the certificate check fails, so no login at all (not "wrong password")
    bad = start(server=slapd.ldaps_url, ldap=f'ca_file = "{slapd.pki.wrong_ca_cert}"')
    r = login(Client(bad.url), "alice", "alice-pw")
    assert r.status == 503 and "not possible right now" in r.text


def test_a_frozen_directory_gives_try_again_later_within_the_deadline(
    start: Start, slapd_factory: Any
) -> None:
    import time

    frozen = slapd_factory(tls=False)
    w = start(using=frozen, web="call_deadline = 1.0\nthreads = 2\n", ldap="receive_timeout = 5\n")
    c = Client(w.url)
    token = c.get("/login").form_value("csrf")
    frozen.freeze()
    try:
        t0 = time.monotonic()
        r = c.post("/login", {"csrf": token, "user": "alice", "password": "alice-pw"})
        took = time.monotonic() - t0
        # every LDAP thread stuck (web.threads = 2): pages that need no LDAP still answer
        for _ in range(2):
            c.post("/login", {"csrf": token, "user": "bob", "password": "bob-pw"})
        other = Client(w.url)
        other.cookies["policyd-session"] = "s" * 43  # so the page looks the session up
        assert other.get("/login").status == 200
    finally:
        frozen.thaw()
    assert r.status == 503 and "busy" in r.text
    assert took < 4.0  # the deadline (1 s), not the LDAP receive timeout (5 s)


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(start: Start) -> None:
    w = start(
        "login_max_failures_per_ip = 2\nlogin_max_failures_per_login = 100\n"
        'trusted_proxies = ["127.0.0.2"]\n'
    )

    def attempt(source: str | None, forwarded: str, user: str, pw: str) -> int:
        c = Client(w.url, source=source)
        token = c.get("/login").form_value("csrf")
        return c.post(
            "/login",
            {"csrf": token, "user": user, "password": pw},
            headers={"X-Forwarded-For": forwarded},
        ).status

    # a direct client cannot dodge the throttle by inventing addresses
    assert attempt(None, "198.51.100.1", "u1", "bad") == 401
    assert attempt(None, "198.51.100.2", "u2", "bad") == 401
    assert attempt(None, "198.51.100.3", "dave", "dave-pw") == 429
    # behind the trusted proxy, each real client is counted on its own
    assert attempt("127.0.0.2", "203.0.113.1", "u3", "bad") == 401
    assert attempt("127.0.0.2", "203.0.113.1", "u4", "bad") == 401
    assert attempt("127.0.0.2", "203.0.113.1", "dave", "dave-pw") == 429
    assert attempt("127.0.0.2", "203.0.113.2", "dave", "dave-pw") == 303
