"""`policyd web` in a real headless Chromium: a real slapd, `policyd web` as a subprocess, the
real Verification API on SQLite and a loopback aiosmtpd sink for the confirmation mail.

JavaScript is off in every run (the page must work without it). Screenshots of each page go
to test-artifacts/browser/ (gitignored); with POLICYD_UPDATE_DOCS=1 the README's screenshots
in docs/ are written by this test too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers.slapd import REPO, Slapd, free_port
from tests.servers.web import MailSink, WebServer, code_and_link, ldap_web_config

pytestmark = [pytest.mark.browser, pytest.mark.slapd, pytest.mark.timeout(120)]

DOCS = REPO / "docs"
PHONE = {"width": 390, "height": 844}


@dataclass
class Env:
    web: WebServer
    sink: MailSink
    browser: Any
    shots: Path

    def context(self, **kw: Any) -> Any:
        kw.setdefault("viewport", {"width": 960, "height": 720})
        return self.browser.new_context(java_script_enabled=False, **kw)

    def shot(self, page: Any, name: str, docs: str | None = None) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)
        if docs and os.environ.get("POLICYD_UPDATE_DOCS") == "1":
            DOCS.mkdir(exist_ok=True)
            page.screenshot(path=str(DOCS / docs), full_page=True)

    def check(self, login: str, sender: str) -> str:
        """`policyd check` for an authenticated client sending as `sender`: its action."""
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "policyd",
                "check",
                "--config",
                str(self.web.config),
                "--client-address",
                "192.0.2.10",
                "--sasl-username",
                login,
                "--sender",
                sender,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert r.returncode == 0, r.stderr
        m = re.search(r"^action=(.*)$", r.stdout, re.M)
        assert m, r.stdout
        return m.group(1)


@pytest.fixture(scope="module")
def env(
    slapd: Slapd, chromium: Any, artifacts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("web-browser")
    port = free_port()
    with MailSink() as sink:
        cfg = ldap_web_config(slapd, tmp, port, sink.port)
        with WebServer(tmp, cfg, port=port) as w:
            yield Env(w, sink, chromium, artifacts)


def log_in(env: Env, page: Any, user: str, password: str, shot: str | None = None) -> None:
    page.goto(env.web.url + "/")
    assert page.title().startswith("Log in")
    page.get_by_label("Login").fill(user)
    page.get_by_label("Password").fill(password)
    if shot:
        env.shot(page, shot)
    page.get_by_role("button", name="Log in").click()
    wait_for(page, "**/addresses")
    assert page.get_by_role("heading", name="My sender addresses").is_visible()


def wait_for(page: Any, pattern: str) -> None:
    """Wait for a navigation to `pattern`; a failure shows the page it stopped on."""
    try:
        page.wait_for_url(pattern, timeout=20_000)
    except Exception as e:
        raise AssertionError(f"{e}\nstopped on {page.url}:\n{page.inner_text('body')}") from None


def request_address(env: Env, page: Any, address: str) -> tuple[str, str]:
    n = len(env.sink.messages)
    page.get_by_label("Address", exact=True).fill(address)
    page.get_by_role("button", name="Send confirmation mail").click()
    wait_for(page, "**/addresses?done=requested")
    assert page.get_by_role("heading", name="Waiting for confirmation").is_visible()
    msg = env.sink.wait_for(address, after=n)
    assert msg["Auto-Submitted"] == "auto-generated"
    return code_and_link(msg)


def test_add_confirm_by_code_check_accepts_remove_refuses(env: Env) -> None:
    ctx = env.context()
    page = ctx.new_page()
    address = "alice@elsewhere.test"
    assert env.check("alice", address).startswith("553")
    log_in(env, page, "alice", "alice-pw", shot="01-login")
    # the directory's addresses, read-only and labelled
    directory = page.get_by_role("region", name="Set by the administrator")
    assert "alice@example.org" in directory.inner_text()
    assert "set by the administrator" in directory.inner_text()
    assert directory.get_by_role("button").count() == 0
    env.shot(page, "02-addresses-empty")
    code, _link = request_address(env, page, address)
    env.shot(page, "03-pending", docs="web-pending.png")
    assert env.check("alice", address).startswith("553")  # pending never counts
    page.get_by_label(f"Code from the mail to {address}").fill(code)
    page.get_by_role("button", name="Confirm", exact=True).click()
    wait_for(page, "**/addresses?done=confirmed")
    assert "The address is confirmed" in page.get_by_role("status").inner_text()
    mine = page.get_by_role("region", name="Added by you")
    assert address in mine.inner_text() and "verified" in mine.inner_text()
    env.shot(page, "04-verified")
    assert env.check("alice", address) == "OK"
    assert env.check("bob", address).startswith("553")  # alice's, not bob's
    page.get_by_role("button", name=f"Remove {address}").click()
    wait_for(page, "**/addresses?done=removed")
    assert address not in page.get_by_role("region", name="Added by you").inner_text()
    assert env.check("alice", address).startswith("553")
    ctx.close()


def test_a_refused_address_shows_why_on_a_phone_sized_screen(env: Env) -> None:
    ctx = env.context(viewport=PHONE, is_mobile=True)
    page = ctx.new_page()
    log_in(env, page, "carol", "carol-pw")
    page.get_by_label("Address", exact=True).fill("someone@example.net")
    page.get_by_role("button", name="Send confirmation mail").click()
    alert = page.get_by_role("alert")
    assert "ask your administrator" in alert.inner_text()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"
    env.shot(page, "05-refused-phone")
    ctx.close()


def test_confirm_through_the_landing_page_button_without_logging_in(env: Env) -> None:
    ctx = env.context()
    page = ctx.new_page()
    address = "bob@elsewhere.test"
    log_in(env, page, "bob", "bob-pw")
    _code, link = request_address(env, page, address)
    ctx.close()
    other = env.context()  # the mailbox owner's browser: no session
    landing = other.new_page()
    landing.goto(link)
    assert landing.get_by_role("heading", name="Confirm a sender address").is_visible()
    assert address in landing.inner_text("main")
    env.shot(landing, "06-landing", docs="web-landing.png")
    assert env.check("bob", address).startswith("553")
    landing.get_by_role("button", name="Confirm", exact=True).click()
    assert "the address is confirmed" in landing.get_by_role("status").inner_text()
    env.shot(landing, "07-landing-confirmed")
    assert env.check("bob", address) == "OK"
    other.close()


def test_opening_the_link_verifies_nothing(env: Env) -> None:
    from playwright.sync_api import expect  # (the chromium fixture made sure it is there)

    ctx = env.context()
    page = ctx.new_page()
    address = "dave@elsewhere.test"
    # keyboard only: the login field has the focus, Tab to the password, Enter sends
    page.goto(env.web.url + "/login")
    expect(page.get_by_label("Login")).to_be_focused()  # autofocus, no script
    page.keyboard.type("dave")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type("dave-pw")
    page.keyboard.press("Enter")
    wait_for(page, "**/addresses")
    _code, link = request_address(env, page, address)
    scanner = env.context()
    for _ in range(3):  # a link scanner fetches, reloads, follows
        p = scanner.new_page()
        p.goto(link)
        p.reload()
        p.close()
    scanner.close()
    assert env.check("dave", address).startswith("553")
    page.reload()
    pending = page.get_by_role("region", name="Waiting for confirmation")
    assert address in pending.inner_text()
    ctx.close()


def test_this_was_not_me_ends_every_logins_request_and_not_now_tells_nothing(env: Env) -> None:
    carol = env.context()
    page = carol.new_page()
    log_in(env, page, "carol", "carol-pw")
    _code, link = request_address(env, page, "target+c@elsewhere.test")
    dave = env.context()
    other = dave.new_page()
    log_in(env, other, "dave", "dave-pw")
    request_address(env, other, "target@elsewhere.test")
    # the mailbox's owner presses "This was not me" on carol's mail
    owner = env.context()
    landing = owner.new_page()
    landing.goto(link)
    landing.get_by_role("button", name="This was not me").click()
    assert "will not be asked again" in landing.inner_text("main")
    owner.close()
    # dave's request for the same mailbox is gone too ...
    other.goto(env.web.url + "/addresses")
    assert "target@elsewhere.test" not in other.inner_text("main")
    # ... and asking again, for any + variant, gets the one neutral answer
    other.get_by_label("Address", exact=True).fill("target+d@elsewhere.test")
    other.get_by_role("button", name="Send confirmation mail").click()
    alert = other.get_by_role("alert").inner_text()
    assert "No confirmation mail can be sent to this address now" in alert
    assert "suppress" not in alert.lower() and "not me" not in alert.lower()
    env.shot(other, "08-not-now")
    dave.close()
    carol.close()


def test_the_directory_wins_and_a_session_ends_with_its_entry(
    slapd_factory: Any, chromium: Any, artifacts: Path, tmp_path: Path
) -> None:
    """Issue 23: an address the directory owns is refused on the page, and once the entry
    that logged in is deleted, the open page's next button press changes nothing."""
    import ldap3

    server: Slapd = slapd_factory(tls=False)
    admin = ldap3.Connection(
        ldap3.Server(server.url, get_info=ldap3.NONE),
        user=server.admin_dn,
        password=server.admin_password,
        client_strategy=ldap3.SAFE_SYNC,
        raise_exceptions=False,
    )
    assert admin.bind()[0]
    bob, alice = "uid=Bob,ou=people,dc=example,dc=org", "uid=alice,ou=people,dc=example,dc=org"
    assert admin.modify(bob, {"mailLocalAddress": [(ldap3.MODIFY_ADD, ["@corp.test"])]})[0]
    port = free_port()
    with MailSink() as sink:
        cfg = ldap_web_config(server, tmp_path, port, sink.port)
        with WebServer(tmp_path, cfg, port=port) as w:
            env = Env(w, sink, chromium, artifacts)
            ctx = env.context()
            page = ctx.new_page()
            log_in(env, page, "alice", "alice-pw")
            page.get_by_label("Address", exact=True).fill("y@corp.test")
            page.get_by_role("button", name="Send confirmation mail").click()
            alert = page.get_by_role("alert")
            assert "managed by the administrators" in alert.inner_text()
            assert "bob" not in alert.inner_text().lower()
            env.shot(page, "08-directory-owned")
            assert sink.messages == []
            address = "x@elsewhere.test"
            code, _link = request_address(env, page, address)
            assert admin.delete(alice)[0]  # the entry that logged in is gone
            page.get_by_label(f"Code from the mail to {address}").fill(code)
            page.get_by_role("button", name="Confirm", exact=True).click()
            assert "Your session has ended" in page.inner_text("main")
            env.shot(page, "09-session-ended")
            page.goto(w.url + "/addresses")
            assert page.title().startswith("Log in")
            assert env.check("alice", address).startswith("553")  # never verified
            ctx.close()
    admin.unbind()
