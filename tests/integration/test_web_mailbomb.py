"""Mail-bombing and what refusals reveal (issue 23, section 4), over HTTP against `policyd web`
with password logins on a real slapd and an SMTP sink: `+` variants are one mailbox for the
per-address limits and the suppression list, "not now" has one answer, and "This was not me"
ends every login's waiting request.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.slapd import Slapd, free_port
from tests.servers.web import (
    Client,
    MailSink,
    Reply,
    WebServer,
    code_and_link,
    ldap_web_config,
)

pytest.importorskip("aiohttp")
pytest.importorskip("aiosmtpd")

pytestmark = pytest.mark.slapd

NOT_NOW = "No confirmation mail can be sent to this address now"


@dataclass
class Env:
    web: WebServer
    sink: MailSink
    db: Path

    def login(self, user: str) -> Client:
        c = Client(self.web.url)
        token = c.get("/login").form_value("csrf")
        r = c.post("/login", {"csrf": token, "user": user, "password": f"{user}-pw"})
        assert r.status == 303, r.text
        return c

    def states(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT login, address, state FROM requests").fetchall()
        return sorted((str(a), str(b), str(c)) for a, b, c in rows)


Start = Callable[..., Env]


@pytest.fixture
def start(slapd: Slapd, tmp_path: Path) -> Iterator[Start]:
    stack: list[tuple[WebServer, MailSink]] = []

    def go(limits: str = "") -> Env:
        port = free_port()
        sink = MailSink().start()
        cfg = ldap_web_config(slapd, tmp_path, port, sink.port)
        cfg = cfg.replace(
            "[verification.limits]\nmail_interval_per_address = 0\n",
            "[verification.limits]\n" + (limits or "mail_interval_per_address = 0\n"),
        )
        w = WebServer(tmp_path / "web", cfg, port=port)
        stack.append((w, sink))
        w.start()
        return Env(w, sink, tmp_path / "senders.sqlite")

    try:
        yield go
    finally:
        for w, sink in stack:
            w.stop()
            sink.stop()


def add(env: Env, c: Client, address: str) -> Reply:
    token = c.get("/addresses").form_value("csrf")
    return c.post("/addresses/add", {"csrf": token, "address": address})


def add_ok(env: Env, c: Client, address: str) -> tuple[str, str]:
    n = len(env.sink.messages)
    r = add(env, c, address)
    assert r.status == 303, r.text
    return code_and_link(env.sink.wait_for(address, after=n))


def error_of(r: Reply) -> str:
    m = re.search(r'<p class="error" role="alert"[^>]*>([^<]*)</p>', r.text)
    assert m, r.text[:3000]
    return m.group(1)


def test_the_plus_variants_of_an_address_share_its_mails_a_day(start: Start) -> None:
    env = start("mail_interval_per_address = 0\nmails_per_address_per_day = 2\n")
    alice = env.login("alice")
    add_ok(env, alice, "victim+1@outside.example")
    add_ok(env, alice, "victim+2@outside.example")
    for c, address in (
        (alice, "victim+3@outside.example"),
        (env.login("carol"), "victim@outside.example"),
    ):
        r = add(env, c, address)
        assert r.status == 429 and NOT_NOW in error_of(r)
    assert len(env.sink.messages) == 2


def test_not_now_has_one_answer_that_tells_nothing_about_other_logins(start: Start) -> None:
    env = start("mail_interval_per_address = 600\n")
    alice, carol = env.login("alice"), env.login("carol")
    # alice asked for it a moment ago ...
    add_ok(env, alice, "shared@outside.example")
    interval = add(env, carol, "shared@outside.example")
    # ... and the owner of another address said "This was not me"
    _, link = add_ok(env, alice, "owner@outside.example")
    anon = Client(env.web.url)
    landing = anon.get(link[link.index("/confirm") :])
    r = anon.post(
        "/confirm",
        {
            "csrf": landing.form_value("csrf"),
            "token": landing.form_value("token"),
            "action": "refuse",
        },
    )
    assert r.status == 200
    suppressed = add(env, carol, "owner+x@outside.example")
    assert interval.status == suppressed.status == 429
    assert error_of(interval) == error_of(suppressed)
    assert NOT_NOW in error_of(interval)
    for r in (interval, suppressed):
        assert "moment ago" not in r.text and "suppress" not in r.text.lower()
        assert "does not accept" not in r.text


def test_this_was_not_me_cancels_every_logins_request_and_blocks_every_variant(
    start: Start,
) -> None:
    env = start()
    alice, carol = env.login("alice"), env.login("carol")
    _, alice_link = add_ok(env, alice, "v+alice@outside.example")
    carol_code, _ = add_ok(env, carol, "v@outside.example")
    anon = Client(env.web.url)
    landing = anon.get(alice_link[alice_link.index("/confirm") :])
    r = anon.post(
        "/confirm",
        {
            "csrf": landing.form_value("csrf"),
            "token": landing.form_value("token"),
            "action": "refuse",
        },
    )
    assert r.status == 200 and "will not be asked again" in r.text
    assert env.states() == [
        ("alice", "v+alice@outside.example", "refused"),
        ("carol", "v@outside.example", "cancelled"),
    ]
    # carol's code from her mail no longer confirms anything
    token = carol.get("/addresses").form_value("csrf")
    r = carol.post(
        "/addresses/confirm",
        {"csrf": token, "address": "v@outside.example", "code": carol_code},
    )
    assert r.status != 303
    assert ("carol", "v@outside.example", "verified") not in env.states()
    # and no variant gets a mail any more
    r = add(env, alice, "v+other@outside.example")
    assert r.status == 429 and NOT_NOW in error_of(r)


def test_confirming_checks_the_suppression_list_again(start: Start) -> None:
    env = start()
    alice = env.login("alice")
    code, link = add_ok(env, alice, "late@outside.example")
    code2, link2 = add_ok(env, alice, "late2@outside.example")
    # on the list however it got there (another process, an older policyd): the waiting
    # requests stay pending, and neither the code nor the link may verify them now
    with sqlite3.connect(env.db) as db:
        for a in ("late@outside.example", "late2@outside.example"):
            db.execute(
                "INSERT INTO suppressed (address, at, actor, reason) VALUES (?, 0, 'x', 'x')",
                (a,),
            )
    token = alice.get("/addresses").form_value("csrf")
    r = alice.post(
        "/addresses/confirm", {"csrf": token, "address": "late@outside.example", "code": code}
    )
    assert r.status == 429 and NOT_NOW in error_of(r)
    anon = Client(env.web.url)
    landing = anon.get(link2[link2.index("/confirm") :])
    if landing.status == 200 and 'name="token"' in landing.text:
        anon.post(
            "/confirm",
            {
                "csrf": landing.form_value("csrf"),
                "token": landing.form_value("token"),
                "action": "confirm",
            },
        )
    states = dict(((a, s) for _, a, s in env.states()))
    assert states == {"late@outside.example": "pending", "late2@outside.example": "pending"}
