"""Active Directory for real (issue 27 item 2): a Samba AD DC, provisioned offline once per
test session (tests/servers/samba_ad.py, data tests/data/ad.ldif + 1100 bulk members), in a
network namespace of the test's own, and the shipped conf/ldap/policyd-ad.toml loaded as is
but for the server URL, the CA file and the bind password."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.netns import available
from tests.servers.requirements import in_ci, require_binaries
from tests.servers.samba_ad import (
    BIND_DN,
    BIND_PASSWORD,
    BULK_MEMBERS,
    REQUIRED_BINARIES,
    SambaDC,
    provision_template,
)
from tests.servers.slapd import REPO

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

AD_TOML = REPO / "conf" / "ldap" / "policyd-ad.toml"
ALICE = {
    "alice@example.com",
    "a.smith@example.com",
    "ali@example.com",  # "sMtP:" prefix
    "sales@example.com",  # Sales <- EMEA Sales <- alice: nested
    "vertrieb@example.com",  # the group's smtp: alias
}


@pytest.fixture(scope="session")
def ad_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binaries(*REQUIRED_BINARIES, why="the Active Directory tier (a Samba AD DC)")
    why = available()
    if why:
        if in_ci():
            pytest.fail(f"{why} [CI=true: a missing tier is a failure]")
        pytest.skip(why)
    return provision_template(tmp_path_factory.mktemp("ad") / "template")


@pytest.fixture(scope="module")
def dc(ad_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    server = SambaDC(ad_template, tmp_path_factory.mktemp("dc") / "dc", tag=f"pd{os.getpid()}")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def ad_config(dc: SambaDC, tmp: Path, **replace: str) -> Path:
    """conf/ldap/policyd-ad.toml with this DC's URL, CA and a password file."""
    pw = tmp / "bind-pw"
    pw.write_text(BIND_PASSWORD + "\n")
    text = AD_TOML.read_text()
    changes = {
        "servers": f'["{dc.url}"]',
        "ca_file": f'"{dc.ca_file}"',
        "bind_password_credential": '""\nbind_password_file = "' + str(pw) + '"',
        **replace,
    }
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.startswith("#") and key in changes:
            line = f"{key} = {changes.pop(key)}"
        lines.append(line)
    assert not changes, changes
    p = tmp / "policyd-ad.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def probe(dc: SambaDC, cfg: Path, calls: list[tuple[str, str]]) -> list[dict[str, list[str]]]:
    r = dc.run([sys.executable, "-m", "tests.servers.ad_probe", str(cfg), json.dumps(calls)])
    assert r.returncode == 0, r.stdout + r.stderr
    out: list[dict[str, list[str]]] = json.loads(r.stdout)
    return out


def ok(result: dict[str, list[str]]) -> set[str]:
    assert "ok" in result, result
    return set(result["ok"])


def test_the_shipped_config_is_the_one_tested() -> None:
    text = AD_TOML.read_text()
    assert f'bind_dn = "{BIND_DN}"' in text


def test_logins_and_addresses(dc: SambaDC, tmp_path: Path) -> None:
    cfg = ad_config(dc, tmp_path)
    got = probe(
        dc,
        cfg,
        [
            ("addresses_of", "alice"),  # sAMAccountName
            ("addresses_of", "alice@corp.example"),  # userPrincipalName
            ("addresses_of", "alice@example.com"),  # mail
            ("addresses_of", "ALICE"),  # logins compare case-insensitively
            ("addresses_of", "carol.w@example.net"),  # a UPN suffix that is no mail domain
            ("addresses_of", "carol"),
            ("addresses_of", "dave"),  # disabled
            ("addresses_of", "dave@corp.example"),
            ("addresses_of", "bob"),
            ("addresses_of", "nobody"),
        ],
    )
    assert ok(got[0]) == ALICE
    assert ok(got[1]) == ALICE
    assert ok(got[2]) == ALICE
    assert ok(got[3]) == ALICE
    assert ok(got[4]) == {"carol@example.com"}
    assert ok(got[5]) == {"carol@example.com"}
    assert ok(got[6]) == set()
    assert ok(got[7]) == set()
    assert ok(got[8]) == {
        "bob@example.com",
        "all@example.com",
    }  # group address: proxyAddresses only
    assert ok(got[9]) == set()


def test_owners_at_the_mx(dc: SambaDC, tmp_path: Path) -> None:
    cfg = ad_config(dc, tmp_path)
    got = probe(
        dc,
        cfg,
        [
            ("owners_of", "alice@example.com"),  # mail
            ("owners_of", "a.smith@example.com"),  # smtp: alias
            ("owners_of", "ali@example.com"),  # sMtP: alias
            ("owners_of", "alice.sip@example.com"),  # SIP: is no mail address
            ("owners_of", "sales@example.com"),  # group mail, nested members, dave disabled
            ("owners_of", "vertrieb@example.com"),  # group smtp: alias
            ("owners_of", "dave.old@example.com"),  # disabled account's alias
            ("owners_of", "all@example.com"),  # group address in proxyAddresses only, 1101 owners
        ],
    )
    assert ok(got[0]) == {"alice"}
    assert ok(got[1]) == {"alice"}
    assert ok(got[2]) == {"alice"}
    assert ok(got[3]) == set()
    assert ok(got[4]) == {"alice"}
    assert ok(got[5]) == {"alice"}
    assert ok(got[6]) == set()
    everyone = ok(got[7])
    assert len(everyone) == BULK_MEMBERS + 1  # more than a page (500) and AD's 1000
    assert {"bob", "m0000", f"m{BULK_MEMBERS - 1:04d}"} <= everyone


def test_protect_local_senders_through_policyd_check(dc: SambaDC, tmp_path: Path) -> None:
    cfg = ad_config(dc, tmp_path)

    def check(*args: str) -> str:
        r = dc.run([sys.executable, "-m", "policyd", "check", "-c", str(cfg), *args])
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.splitlines()[0]

    mx = ("--server-port", "25", "--client-address", "203.0.113.9",
          "--recipient", "alice@example.com")  # fmt: skip
    for forged in ("a.smith@example.com", "vertrieb@example.com", "all@example.com"):
        assert check(*mx, "--sender", forged).startswith("action=553"), forged
    assert check(*mx, "--sender", "someone@elsewhere.example") == "action=DUNNO"
    sub = ("--server-port", "587", "--client-address", "203.0.113.9")
    assert check(*sub, "--sasl-username", "alice@corp.example", "--sender",
                 "vertrieb@example.com") == "action=OK"  # fmt: skip
    assert check(*sub, "--sasl-username", "dave", "--sender", "dave@example.com").startswith(
        "action=553"
    )


def test_referrals_are_not_followed(dc: SambaDC, tmp_path: Path) -> None:
    cfg = ad_config(dc, tmp_path)
    refs, alice = probe(dc, cfg, [("references", "alice"), ("addresses_of", "alice")])
    # the DC answers a subtree search from the domain with a referral to CN=Configuration
    # (on a host name, corp.example, that does not even resolve here) ...
    assert any("CN=Configuration" in u for u in ok(refs)), refs
    # ... and policyd answers from the DC itself, following none
    assert ok(alice) == ALICE
    # a base the DC does not hold is an error (real AD: a referral; Samba: noSuchObject), never
    # a hop to another server
    cfg = ad_config(dc, tmp_path, user_base='"DC=other,DC=example"')
    [got] = probe(dc, cfg, [("addresses_of", "alice")])
    assert "error" in got, got
    assert "referral" in got["error"] or "does not exist" in got["error"], got


def test_realms_refuse_to_merge_two_alices(dc: SambaDC, tmp_path: Path) -> None:
    # alice@example.com (alice) and alice@example.net (alice.o, only in proxyAddresses)
    cfg = ad_config(dc, tmp_path)
    cfg.write_text(cfg.read_text() + '\n[addresses]\nrealms = ["example.com", "example.net"]\n')
    r = dc.run([sys.executable, "-m", "policyd", "config-check", "-c", str(cfg), "--connect"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "realms: FAILED" in r.stdout
    assert "CN=Alice Smith,OU=Staff" in r.stdout and "CN=Alice Other,OU=Staff" in r.stdout
    cfg.write_text(cfg.read_text().replace('"example.net"]', '"corp.example"]'))
    r = dc.run([sys.executable, "-m", "policyd", "config-check", "-c", str(cfg), "--connect"])
    assert r.returncode == 0 and "realms: ok" in r.stdout, r.stdout + r.stderr
