"""Logins as Dovecot gives them (issue 27 item 1), against a real slapd: the full address as
the login (auth_username_format = %Lu) with the documented recipe, and addresses.realms
refusing to merge two people who share a local part under two realm domains."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from policyd.addresses import AddressRules
from policyd.config import LdapConfig, load_config
from policyd.directory.base import DirectoryError
from policyd.directory.ldap import LdapDirectory
from policyd.runtime import build_runtime
from tests.servers.policyd_proc import run_cli as policyd
from tests.servers.slapd import BIND_DN, BIND_PASSWORD, DIRECTORY_LDIF, Slapd
from tests.servers.slapd_fixtures import SlapdFactory

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(120)]

# A second alice, at another domain: a different person.
OTHER_ALICE = b"""
dn: uid=alice.c,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice.c
cn: Alice Other
sn: Other
mail: alice@example.com
"""
ALICE_DN = "uid=alice,ou=people,dc=example,dc=org"
OTHER_DN = "uid=alice.c,ou=people,dc=example,dc=org"

#: The recipe README.md documents for full-address logins (Dovecot %Lu).
FULL_ADDRESS = (
    'user_filter = "(&(objectClass=inetOrgPerson)(mail={login}))"\nowner_login_attribute = "mail"\n'
)


@pytest.fixture
def server(slapd_factory: SlapdFactory) -> Slapd:
    return slapd_factory(ldif=None, _ldif_text=DIRECTORY_LDIF.read_bytes() + OTHER_ALICE)


def write_config(tmp_path: Path, server: Slapd, ldap_extra: str, realms: list[str]) -> Path:
    pw = tmp_path / "pw"
    pw.write_text(BIND_PASSWORD + "\n")
    p = tmp_path / "policyd.toml"
    p.write_text(
        f'[directory]\nbackend = "ldap"\n[addresses]\nrealms = {realms!r}\n'.replace("'", '"')
        + f'[ldap]\nservers = ["{server.url}"]\nbind_dn = "{BIND_DN}"\n'
        f'bind_password_file = "{pw}"\nuser_base = "ou=people,dc=example,dc=org"\n'
        "connect_timeout = 1\nreceive_timeout = 1\n" + ldap_extra
    )
    return p


def check(cfg: Path, login: str, sender: str) -> subprocess.CompletedProcess[str]:
    return policyd(
        "check", "-c", str(cfg), "--client-address", "203.0.113.9",
        "--sasl-username", login, "--sender", sender,
    )  # fmt: skip


def test_full_address_logins_with_the_documented_recipe(server: Slapd, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, server, FULL_ADDRESS, [])
    ldap = load_config(cfg).ldap
    d = LdapDirectory(ldap, AddressRules())
    try:
        assert d.addresses_of("alice@example.org") == {
            "alice@example.org",
            "alice.smith@example.org",
            "alice@example.net",
            "sales@example.org",  # through the group, found by the entry's DN
        }
        assert d.addresses_of("alice@example.com") == {"alice@example.com"}
        assert d.addresses_of("alice") == frozenset()  # the bare user is not a login here
        # the reverse lookup (protect_local_senders) reports owners by their login, the address
        assert d.owners_of("alice.smith@example.org") == {"alice@example.org"}
        assert d.owners_of("alice@example.com") == {"alice@example.com"}
        assert "alice@example.org" in d.owners_of("sales@example.org")  # member's entry read
    finally:
        d.close()
    r = check(cfg, "alice@example.org", "alice.smith@example.org")
    assert r.stdout.splitlines()[0] == "action=OK", r.stdout + r.stderr
    r = check(cfg, "alice@example.com", "alice@example.org")
    assert r.stdout.splitlines()[0].startswith("action=553"), r.stdout + r.stderr


def test_realms_refuse_to_merge_two_alices(server: Slapd, tmp_path: Path) -> None:
    # the old way to accept user@domain logins: both alices become "alice"
    cfg = write_config(tmp_path, server, "", ["example.org", "example.com"])
    config = load_config(cfg)
    with pytest.raises(DirectoryError) as ei:
        build_runtime(config).close()  # what start (and reload) builds
    msg = str(ei.value)
    assert "would merge different people" in msg
    assert f"alice@example.com ({OTHER_DN})" in msg and f"alice@example.org ({ALICE_DN})" in msg
    # `check`: refuses too; on the old code it answered OK (alice@example.com sent as the other)
    r = check(cfg, "alice@example.com", "alice@example.org")
    assert r.returncode != 0 and not r.stdout.startswith("action=OK"), r.stdout
    assert OTHER_DN in r.stdout + r.stderr
    # config-check --connect says so; without --connect it cannot know (no directory read)
    r = policyd("config-check", "-c", str(cfg), "--connect")
    assert r.returncode == 1
    assert "realms: FAILED" in r.stdout and OTHER_DN in r.stdout and ALICE_DN in r.stdout
    r = policyd("config-check", "-c", str(cfg))
    assert r.returncode == 0 and "realms: checked against the directory by --connect" in r.stdout
    # start: `policyd serve` refuses before it listens
    r = policyd("serve", "-c", str(cfg))
    assert r.returncode != 0
    assert "would merge different people" in r.stderr and OTHER_DN in r.stderr, r.stderr
    # one realm (Cyrus' smtpd_sasl_local_domain) merges nobody
    cfg1 = write_config(tmp_path, server, "", ["example.org"])
    build_runtime(load_config(cfg1)).close()
    r = check(cfg1, "alice@example.org", "alice@example.org")
    assert r.stdout.splitlines()[0] == "action=OK", r.stdout + r.stderr


def test_realms_check_passes_when_one_person_holds_both(server: Slapd, tmp_path: Path) -> None:
    # alice holds alice@example.org and alice@example.net herself: nobody is merged
    cfg = write_config(tmp_path, server, "", ["example.org", "example.net"])
    build_runtime(load_config(cfg)).close()
    r = policyd("config-check", "-c", str(cfg), "--connect")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "realms: ok" in r.stdout


def test_realms_check_fails_closed_when_the_directory_is_down(tmp_path: Path) -> None:
    cfg = LdapConfig(servers=("ldap://127.0.0.1:1",), connect_timeout=1, receive_timeout=1)
    from policyd.directory.ldap.realms import check_realms

    d = LdapDirectory(cfg, AddressRules(realms=frozenset({"example.org", "example.net"})))
    try:
        with pytest.raises(DirectoryError, match="cannot check against the directory"):
            check_realms(d)
    finally:
        d.close()
