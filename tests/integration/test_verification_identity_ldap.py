"""Who owns an address, against a real slapd (issue 23, section 1 and the session bullet of 5):
the directory wins over a verified address, a verified address and a web session belong to the
directory entry that made them (entryUUID), not to the login string, and a verification grants
exactly the address verified. Through the command line (`policyd senders`, `policyd check`)
and the web page, as an admin and a user would meet them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3
import pytest

from tests.servers.slapd import Slapd, free_port
from tests.servers.web import Client, MailSink, Reply, WebServer, code_and_link, ldap_web_config

pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
PEOPLE = "ou=people,dc=example,dc=org"
ALICE_DN = f"uid=alice,{PEOPLE}"
BOB_DN = f"uid=Bob,{PEOPLE}"
WRITER_DN = "cn=policyd-writer,ou=services,dc=example,dc=org"
WRITER_PASSWORD = "writer-secret"
ATTR = "policydSenderAddress"
X = "x@elsewhere.test"


def admin(server: Slapd) -> Any:
    conn = ldap3.Connection(
        ldap3.Server(server.url, get_info=ldap3.NONE, connect_timeout=2),
        user=server.admin_dn,
        password=server.admin_password,
        client_strategy=ldap3.SAFE_SYNC,
        receive_timeout=5,
        raise_exceptions=False,
    )
    ok, result, _, _ = conn.bind()
    assert ok, result
    return conn


def change(server: Slapd, dn: str, changes: dict[str, Any]) -> None:
    conn = admin(server)
    _, result, _, _ = conn.modify(dn, changes)
    conn.unbind()
    assert result["result"] == 0, result


def delete_alice(server: Slapd) -> None:
    conn = admin(server)
    _, result, _, _ = conn.delete(ALICE_DN)
    conn.unbind()
    assert result["result"] == 0, result


def new_alice(server: Slapd, password: str = "alice-pw") -> None:
    """Another person, under the same login (and DN) as the alice that was deleted."""
    conn = admin(server)
    _, result, _, _ = conn.add(
        ALICE_DN,
        ["inetOrgPerson", "inetLocalMailRecipient"],
        {"uid": "alice", "cn": "Alice Newcomer", "sn": "Newcomer", "mail": "alice@example.org",
         "userPassword": password},
    )  # fmt: skip
    conn.unbind()
    assert result["result"] == 0, result


def give(server: Slapd, dn: str, address: str) -> None:
    """The admin gives the entry an address (or "@domain") in the directory."""
    change(server, dn, {"mailLocalAddress": [(ldap3.MODIFY_ADD, [address])]})


@dataclass
class Site:
    server: Slapd
    tmp: Path
    config: Path
    sink: MailSink

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "policyd", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    def senders(self, *args: str) -> tuple[int, dict[str, Any]]:
        r = self.run("senders", "-c", str(self.config), "--json", *args)
        assert r.stdout.strip(), r.stderr
        return r.returncode, json.loads(r.stdout)

    def listed(self) -> dict[tuple[str, str], dict[str, Any]]:
        rc, out = self.senders("list")
        assert rc == 0, out
        return {(e["login"], e["address"]): e for e in out["entries"]}

    def check(self, login: str, sender: str) -> str:
        r = self.run("check", "-c", str(self.config), "--sasl-username", login, "--sender", sender)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def write_config(self, *, local_domains: str = "", store_ldap: bool = False) -> None:
        verification = ""
        ldap = f'user_attributes = ["mail", "mailLocalAddress", "{ATTR}"]\n' if store_ldap else ""
        if store_ldap:
            pw = self.tmp / "writer-password"
            pw.write_text(WRITER_PASSWORD + "\n")
            verification = (
                'store = "ldap"\n[verification.ldap]\n'
                f'writer_bind_dn = "{WRITER_DN}"\nwriter_password_file = "{pw}"\n'
            )
        text = ldap_web_config(
            self.server, self.tmp, free_port(), self.sink.port, verification=verification,
            ldap=ldap,
        )  # fmt: skip
        if local_domains:
            text = text.replace(
                'local_domains = ["example.org", "example.net", "carol.example"]',
                f'local_domains = ["example.org", "example.net", "carol.example", {local_domains}]',
            )
        self.config.write_text(text)


@pytest.fixture
def site(slapd_factory: Any, tmp_path: Path) -> Iterator[Site]:
    server: Slapd = slapd_factory(tls=False)
    conn = admin(server)
    ok, result, _, _ = conn.add(
        WRITER_DN,
        ["applicationProcess", "simpleSecurityObject"],
        {"cn": "policyd-writer", "userPassword": WRITER_PASSWORD},
    )
    conn.unbind()
    assert ok, result
    with MailSink() as sink:
        s = Site(server, tmp_path, tmp_path / "policyd.toml", sink)
        s.write_config()
        yield s


# -- the directory wins -------------------------------------------------------------------------


def test_a_request_for_an_address_the_directory_owns_is_refused(site: Site) -> None:
    give(site.server, BOB_DN, "@corp.test")  # bob owns a whole domain
    give(site.server, f"uid=dave,{PEOPLE}", "y@shared.test")  # dave one address
    for address in ("y@corp.test", "y@shared.test", "y+tag@shared.test", "Y@Corp.Test"):
        rc, out = site.senders("request", "alice", address)
        assert (rc, out["code"]) == (1, "directory_owned"), (address, out)
        assert "bob" not in out["message"].lower() and "dave" not in out["message"].lower()
        rc, out = site.senders("add", "alice", address, "--no-verify")
        assert (rc, out["code"]) == (1, "directory_owned"), (address, out)
    assert site.sink.messages == []  # no mail went to bob's or dave's address
    assert site.listed() == {}
    rc, out = site.senders("request", "alice", "y@free.test")  # the refusal is about ownership
    assert rc == 0, out
    assert site.sink.wait_for("y@free.test")


def test_a_later_directory_change_supersedes_a_verified_address_without_a_command(
    site: Site,
) -> None:
    rc, out = site.senders("add", "alice", "y@corp.test", "--no-verify")
    assert rc == 0, out
    assert "action=OK" in site.check("alice", "y@corp.test")
    give(site.server, BOB_DN, "@corp.test")  # then the directory gives bob the whole domain
    assert "action=OK" in site.check("bob", "y@corp.test")  # bob's own mail as it passes
    assert "action=553" in site.check("alice", "y@corp.test")
    entry = site.listed()[("alice", "y@corp.test")]
    assert entry["state"] == "superseded" and "@corp.test" in entry["why"]
    r = site.run("senders", "-c", str(site.config), "list")
    assert "superseded" in r.stdout and "no longer counts" in r.stdout, r.stdout
    # taken back in the directory: the row counts again (it was never changed)
    change(site.server, BOB_DN, {"mailLocalAddress": [(ldap3.MODIFY_DELETE, ["@corp.test"])]})
    assert "action=OK" in site.check("alice", "y@corp.test")
    assert site.listed()[("alice", "y@corp.test")]["state"] == "verified"


def test_a_local_domains_change_takes_effect_on_verified_addresses(site: Site) -> None:
    rc, out = site.senders("add", "alice", "y@soon-ours.test", "--no-verify")
    assert rc == 0, out
    assert "action=OK" in site.check("alice", "y@soon-ours.test")
    site.write_config(local_domains='"soon-ours.test"')
    assert "action=553" in site.check("alice", "y@soon-ours.test")
    entry = site.listed()[("alice", "y@soon-ours.test")]
    assert entry["state"] == "superseded" and "local_domains" in entry["why"]
    # a subdomain too
    site.write_config()
    rc, out = site.senders("add", "alice", "y@mail.sub.test", "--no-verify")
    assert rc == 0, out
    site.write_config(local_domains='"sub.test"')
    assert "action=553" in site.check("alice", "y@mail.sub.test")


# -- a verified address belongs to the entry ------------------------------------------------


def test_a_new_entry_under_the_same_login_does_not_inherit_verified_addresses(
    site: Site,
) -> None:
    rc, out = site.senders("add", "alice", X, "--no-verify")
    assert rc == 0, out
    assert "action=OK" in site.check("alice", X)
    delete_alice(site.server)
    entry = site.listed()[("alice", X)]
    assert entry["state"] == "superseded" and "entry" in entry["why"]
    new_alice(site.server)  # another person gets uid=alice
    assert "action=OK" in site.check("alice", "alice@example.org")  # her own address
    text = site.check("alice", X)
    assert "action=553" in text and f"owns {X}" not in text
    assert f"superseded: {X}: verified " in text and "does not count" in text
    assert site.listed()[("alice", X)]["state"] == "superseded"
    # the admin can still revoke it, and the newcomer may verify it herself
    rc, out = site.senders("revoke", "alice", X)
    assert rc == 0, out
    rc, out = site.senders("add", "alice", X, "--no-verify")
    assert rc == 0, out
    assert "action=OK" in site.check("alice", X)


def test_add_without_verification_refuses_a_login_the_directory_does_not_know(
    site: Site,
) -> None:
    rc, out = site.senders("add", "nobody", X, "--no-verify")
    assert (rc, out["code"]) == (1, "unknown_login"), out
    rc, out = site.senders("add", "twin", X, "--no-verify")  # two entries: not guessed
    assert (rc, out["code"]) == (1, "unknown_login"), out
    assert site.listed() == {}


def _values(server: Slapd, dn: str = ALICE_DN) -> set[str]:
    conn = admin(server)
    _, result, resp, _ = conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[ATTR])
    conn.unbind()
    if result["result"] == 32:
        return set()
    return {v.lower() for v in resp[0]["attributes"].get(ATTR, [])}


def test_with_store_ldap_revoke_works_when_the_entry_is_gone_or_replaced(site: Site) -> None:
    site.write_config(store_ldap=True)
    for address in (X, "y@elsewhere.test"):
        rc, out = site.senders("add", "alice", address, "--no-verify")
        assert rc == 0, out
    assert _values(site.server) == {X, "y@elsewhere.test"}
    assert "action=OK" in site.check("alice", X)
    give(site.server, f"uid=dave,{PEOPLE}", "@elsewhere.test")  # the directory wins here too
    assert "action=553" in site.check("alice", X)  # (though her entry still holds the value)
    assert "action=OK" in site.check("dave", X)
    change(
        site.server,
        f"uid=dave,{PEOPLE}",
        {"mailLocalAddress": [(ldap3.MODIFY_DELETE, ["@elsewhere.test"])]},
    )
    delete_alice(site.server)
    rc, out = site.senders("revoke", "alice", X)  # the entry is gone: nothing left to remove
    assert rc == 0, out
    new_alice(site.server)
    rc, out = site.senders("add", "alice", "z@elsewhere.test", "--no-verify")
    assert rc == 0, out
    rc, out = site.senders("revoke", "alice", "y@elsewhere.test")  # the old alice's row
    assert rc == 0, out
    assert _values(site.server) == {"z@elsewhere.test"}  # the newcomer's value untouched
    states = {k[1]: v["state"] for k, v in site.listed().items()}
    assert states == {X: "revoked", "y@elsewhere.test": "revoked", "z@elsewhere.test": "verified"}


def test_verifying_grants_exactly_the_address_not_its_extensions(site: Site) -> None:
    rc, out = site.senders("add", "alice", X, "--no-verify")
    assert rc == 0, out
    assert "action=OK" in site.check("alice", X)
    assert "action=OK" in site.check("alice", "X@ELSEWHERE.test")  # (the same address)
    for other in ("x+anything@elsewhere.test", "x-anything@elsewhere.test"):
        assert "action=553" in site.check("alice", other), other
    # our own domains keep the delimiter rules
    assert "action=OK" in site.check("alice", "alice+tag@example.org")
    # the milter's From: check, the same
    for header, ok in ((X, True), ("x+anything@elsewhere.test", False)):
        r = site.run(
            "check", "-c", str(site.config), "--sasl-username", "alice", "--sender", X,
            "--header-from", header,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert ("milter_reason=header_from_owned" in r.stdout) == ok, r.stdout


# -- the web page -----------------------------------------------------------------------------


@pytest.fixture
def web(site: Site) -> Iterator[WebServer]:
    port = free_port()
    text = site.config.read_text().replace(
        "link_base_url = ", f'link_base_url = "http://127.0.0.1:{port}/confirm"\n# was: '
    )
    (site.tmp / "web").mkdir()
    with WebServer(site.tmp / "web", text, port=port) as w:
        yield w


def login(w: WebServer, user: str = "alice", password: str = "alice-pw") -> Client:
    c = Client(w.url)
    token = c.get("/login").form_value("csrf")
    r = c.post("/login", {"csrf": token, "user": user, "password": password})
    assert r.status == 303, r.text
    return c


def post(c: Client, path: str, **fields: str) -> Reply:
    token = c.get("/addresses").form_value("csrf")
    return c.post(path, {"csrf": token, **fields})


def states(site: Site) -> list[tuple[str, str, str]]:
    with sqlite3.connect(site.tmp / "senders.sqlite") as db:
        rows = db.execute("SELECT login, address, state FROM requests").fetchall()
    return sorted((str(a), str(b), str(c)) for a, b, c in rows)


def test_the_page_refuses_an_address_the_directory_owns(site: Site, web: WebServer) -> None:
    give(site.server, BOB_DN, "@corp.test")
    c = login(web)
    r = post(c, "/addresses/add", address="y@corp.test")
    assert r.status == 400 and "managed by the administrators" in r.text, r.text
    assert "bob" not in r.text.lower()
    assert site.sink.messages == [] and states(site) == []


def test_a_session_ends_when_its_entry_is_deleted_and_never_acts_for_a_newcomer(
    site: Site, web: WebServer
) -> None:
    c = login(web)
    other = login(web)  # a second session of the same alice
    r = post(c, "/addresses/add", address=X)
    assert r.status == 303, r.text
    code, _ = code_and_link(site.sink.wait_for(X))
    token = c.get("/addresses").form_value("csrf")
    other_token = other.get("/addresses").form_value("csrf")
    delete_alice(site.server)
    r = c.post("/addresses/confirm", {"csrf": token, "address": X, "code": code})
    assert r.status == 403 and "session has ended" in r.text, r.text
    assert states(site) == [("alice", X, "pending")]  # not confirmed
    new_alice(site.server)  # another person, same login, same password even
    r = other.post("/addresses/add", {"csrf": other_token, "address": "y@elsewhere.test"})
    assert r.status == 403 and "session has ended" in r.text, r.text
    assert states(site) == [("alice", X, "pending")]  # nothing in the newcomer's name
    assert other.get("/addresses").status == 303  # logged out: to the login page
    fresh = login(web)  # the newcomer logs in herself: her own session works
    r = post(fresh, "/addresses/add", address="y@elsewhere.test")
    assert r.status == 303, r.text


def test_a_session_ends_when_the_password_changes(slapd_factory: Any, tmp_path: Path) -> None:
    server: Slapd = slapd_factory(tls=False, ppolicy=True)
    with MailSink() as sink:
        port = free_port()
        (tmp_path / "web").mkdir()
        cfg = ldap_web_config(server, tmp_path, port, sink.port)
        with WebServer(tmp_path / "web", cfg, port=port) as w:
            c = login(w)
            token = c.get("/addresses").form_value("csrf")
            conn = admin(server)
            assert conn.extend.standard.modify_password(ALICE_DN, None, "changed-pw")
            conn.unbind()
            r = c.post("/addresses/add", {"csrf": token, "address": X})
            assert r.status == 403 and "session has ended" in r.text, r.text
            assert sink.messages == []
            r = post(login(w, password="changed-pw"), "/addresses/add", address=X)
            assert r.status == 303, r.text
