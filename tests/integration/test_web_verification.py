"""The address pages over plain HTTP against the running `policyd web`, with the real
Verification API on a SQLite file and a loopback aiosmtpd sink receiving its mail.

Logins come from a trusted proxy header (127.0.0.2), so no LDAP server is needed here; the
password login against slapd and the browser runs are in tests/browser/.
"""

from __future__ import annotations

import html
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.slapd import REPO, free_port
from tests.servers.web import Client, MailSink, WebServer, code_and_link

pytest.importorskip("aiohttp")
pytest.importorskip("aiosmtpd")

SENDERS = REPO / "conf" / "senders.txt"


def verification_config(tmp: Path, web_port: int, smtp_port: int, extra: str = "") -> str:
    return (
        f'[directory]\nfile = "{SENDERS}"\n'
        "[verification]\nenabled = true\n"
        f'database = "{tmp / "senders.sqlite"}"\n'
        'site_name = "Example Mail"\n'
        f'link_base_url = "http://127.0.0.1:{web_port}/confirm"\n'
        "[verification.mail]\n"
        f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp_port}\n'
        'from_address = "postmaster@example.org"\n'
        "[verification.limits]\nmail_interval_per_address = 0\n"
        f'[web]\ndatabase = "{tmp / "web.sqlite"}"\n'
        'auth = "proxy"\ntrusted_proxies = ["127.0.0.2"]\ncookie_secure = false\n' + extra
    )


@dataclass
class Env:
    web: WebServer
    sink: MailSink
    db: Path

    def user(self, login: str) -> tuple[Client, dict[str, str]]:
        return Client(self.web.url, source="127.0.0.2"), {"X-Remote-User": login}

    def states(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT login, address, state FROM requests").fetchall()
        return sorted((str(a), str(b), str(c)) for a, b, c in rows)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    port = free_port()
    with MailSink() as sink:
        cfg = verification_config(tmp_path, port, sink.port)
        with WebServer(tmp_path / "web", cfg, port=port) as w:
            yield Env(w, sink, tmp_path / "senders.sqlite")


def page(c: Client, hdr: dict[str, str]) -> tuple[str, str]:
    r = c.get("/addresses", headers=hdr)
    assert r.status == 200, r.text
    return r.text, r.form_value("csrf")


def add(env: Env, c: Client, hdr: dict[str, str], address: str) -> tuple[str, str]:
    _, token = page(c, hdr)
    n = len(env.sink.messages)
    r = c.post("/addresses/add", {"csrf": token, "address": address}, headers=hdr)
    assert r.status == 303 and r.header("Location") == "/addresses?done=requested", r.text
    return code_and_link(env.sink.wait_for(address, after=n))


def test_directory_addresses_are_listed_read_only(env: Env) -> None:
    c, hdr = env.user("alice")
    text, _ = page(c, hdr)
    assert "Set by the administrator" in text
    for a in ("alice@example.org", "alice.smith@example.org", "sales@example.org"):
        assert a in text
    assert 'name="address" value="alice@example.org"' not in text  # no Remove for these


def test_add_then_confirm_with_the_code_then_remove(env: Env) -> None:
    c, hdr = env.user("alice")
    code, _link = add(env, c, hdr, "alice@elsewhere.test")
    text, token = page(c, hdr)
    assert "Waiting for confirmation" in text and "alice@elsewhere.test" in text
    r = c.post(
        "/addresses/confirm",
        {"csrf": token, "address": "alice@elsewhere.test", "code": code},
        headers=hdr,
    )
    assert r.status == 303 and r.header("Location") == "/addresses?done=confirmed"
    assert ("alice", "alice@elsewhere.test", "verified") in env.states()
    text, token = page(c, hdr)
    assert "Added by you" in text and "Remove alice@elsewhere.test" in text
    r = c.post("/addresses/remove", {"csrf": token, "address": "alice@elsewhere.test"}, headers=hdr)
    assert r.status == 303
    assert ("alice", "alice@elsewhere.test", "revoked") in env.states()


def test_a_wrong_code_is_refused_with_the_reason_and_counts_a_try(env: Env) -> None:
    c, hdr = env.user("alice")
    code, _ = add(env, c, hdr, "wrong@elsewhere.test")
    _, token = page(c, hdr)
    bad = "00000000" if code != "00000000" else "11111111"
    r = c.post(
        "/addresses/confirm",
        {"csrf": token, "address": "wrong@elsewhere.test", "code": bad},
        headers=hdr,
    )
    assert r.status == 400 and "Wrong code; 4 tries left." in r.text
    assert ("alice", "wrong@elsewhere.test", "pending") in env.states()


def test_refusals_show_the_reason_and_send_no_mail(env: Env) -> None:
    c, hdr = env.user("alice")
    _, token = page(c, hdr)
    for address, status, reason in (
        ("not an address", 400, ""),
        ("alice@example.org", 400, "ask your administrator"),
        ("someone@example.org", 400, "ask your administrator"),
    ):
        r = c.post("/addresses/add", {"csrf": token, "address": address}, headers=hdr)
        assert r.status == status, (address, r.status, r.text)
        assert 'role="alert"' in r.text and reason in r.text
    assert env.sink.messages == []


def test_hostile_input_is_shown_escaped_never_as_markup(env: Env) -> None:
    c, hdr = env.user("alice")
    _, token = page(c, hdr)
    hostile = '"><script>alert(1)</script>@x.test'
    r = c.post("/addresses/add", {"csrf": token, "address": hostile}, headers=hdr)
    assert r.status == 400
    assert "<script>alert(1)</script>" not in r.text
    assert html.escape(hostile, quote=True) in r.text or "&lt;script&gt;" in r.text
    assert env.sink.messages == []


def test_opening_the_link_changes_nothing_and_the_button_confirms(env: Env) -> None:
    c, hdr = env.user("bob")
    _code, link = add(env, c, hdr, "bob@elsewhere.test")
    path = link.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    scanner = Client(env.web.url)  # a mail scanner: no session, fetches the link twice
    for _ in range(2):
        r = scanner.get("/" + path)
        assert r.status == 200 and "bob@elsewhere.test" in r.text
        assert r.header("Referrer-Policy") == "no-referrer"
        assert r.header("Cache-Control") == "no-store"
    assert ("bob", "bob@elsewhere.test", "pending") in env.states()
    # the person, without logging in, presses Confirm
    person = Client(env.web.url)
    landing = person.get("/" + path)
    fields = {
        "csrf": landing.form_value("csrf"),
        "token": landing.form_value("token"),
        "action": "confirm",
    }
    r = person.post("/confirm", fields)
    assert r.status == 200 and "the address is confirmed" in r.text
    assert ("bob", "bob@elsewhere.test", "verified") in env.states()
    again = person.post("/confirm", fields)
    assert again.status == 400 and "already used" in again.text
    # neither the link's token nor the code reaches the log (no access log with URLs)
    log = env.web.log_text()
    assert fields["token"] not in log and _code not in log


def test_this_was_not_me_refuses_and_suppresses(env: Env) -> None:
    c, hdr = env.user("bob")
    _, link = add(env, c, hdr, "victim@elsewhere.test")
    path = "/" + link.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    person = Client(env.web.url)
    landing = person.get(path)
    r = person.post(
        "/confirm",
        {
            "csrf": landing.form_value("csrf"),
            "token": landing.form_value("token"),
            "action": "refuse",
        },
    )
    assert r.status == 200 and "will not be asked again" in r.text
    assert ("bob", "victim@elsewhere.test", "refused") in env.states()
    _, token = page(c, hdr)
    r = c.post("/addresses/add", {"csrf": token, "address": "victim@elsewhere.test"}, headers=hdr)
    assert r.status == 429 and "No confirmation mail can be sent to this address now" in r.text


def test_landing_post_without_its_csrf_cookie_changes_nothing(env: Env) -> None:
    c, hdr = env.user("bob")
    _, link = add(env, c, hdr, "forged@elsewhere.test")
    path = "/" + link.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    token = Client(env.web.url).get(path).form_value("token")
    attacker = Client(env.web.url)  # another site's form: our cookie is not theirs
    r = attacker.post("/confirm", {"csrf": "x" * 43, "token": token, "action": "confirm"})
    assert r.status == 403
    assert ("bob", "forged@elsewhere.test", "pending") in env.states()


def test_a_post_with_another_users_csrf_token_changes_nothing(env: Env) -> None:
    alice, ahdr = env.user("alice")
    code, _ = add(env, alice, ahdr, "shared@elsewhere.test")
    bob, bhdr = env.user("bob")
    _, bob_token = page(bob, bhdr)
    # bob's token in alice's session: refused; alice's request stays as it was
    r = alice.post(
        "/addresses/confirm",
        {"csrf": bob_token, "address": "shared@elsewhere.test", "code": code},
        headers=ahdr,
    )
    assert r.status == 403
    r = alice.post(
        "/addresses/cancel", {"csrf": bob_token, "address": "shared@elsewhere.test"}, headers=ahdr
    )
    assert r.status == 403
    assert ("alice", "shared@elsewhere.test", "pending") in env.states()
    # and bob acting on alice's address with his own token reaches only his own requests
    r = bob.post(
        "/addresses/cancel", {"csrf": bob_token, "address": "shared@elsewhere.test"}, headers=bhdr
    )
    assert r.status == 400
    assert ("alice", "shared@elsewhere.test", "pending") in env.states()


def test_resend_voids_the_old_code_and_cancel_ends_the_request(env: Env) -> None:
    c, hdr = env.user("alice")
    old_code, _ = add(env, c, hdr, "again@elsewhere.test")
    _, token = page(c, hdr)
    n = len(env.sink.messages)
    r = c.post("/addresses/resend", {"csrf": token, "address": "again@elsewhere.test"}, headers=hdr)
    assert r.status == 303 and r.header("Location") == "/addresses?done=resent", r.text
    new_code, _ = code_and_link(env.sink.wait_for("again@elsewhere.test", after=n))
    if new_code != old_code:  # (1 in 10^8 they are equal)
        r = c.post(
            "/addresses/confirm",
            {"csrf": token, "address": "again@elsewhere.test", "code": old_code},
            headers=hdr,
        )
        assert r.status == 400 and "Wrong code" in r.text
    r = c.post("/addresses/cancel", {"csrf": token, "address": "again@elsewhere.test"}, headers=hdr)
    assert r.status == 303
    assert ("alice", "again@elsewhere.test", "cancelled") in env.states()
