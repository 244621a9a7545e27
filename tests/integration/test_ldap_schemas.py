"""The common schemas (issue 27 item 5): each shipped example config, loaded as is but for
the server and the password, against a real slapd holding that schema's kind of directory.
Each test's slapd has the shipped conf/ldap/acl.conf with the schema's attributes added to the
policyd account's attrs= list, as each example config says to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.config import load_config
from policyd.directory.ldap import LdapDirectory
from policyd.runtime import build_runtime
from tests.servers.slapd import ACL_FILE, BIND_PASSWORD, REPO, Slapd
from tests.servers.slapd_fixtures import SlapdFactory

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(120)]

DATA = REPO / "tests" / "data"
SCHEMA = DATA / "schema"


def acl_with(tmp: Path, *attrs: str) -> Path:
    """conf/ldap/acl.conf with these attributes added to what the policyd account reads."""
    text = ACL_FILE.read_text()
    old = next(ln + "\n" for ln in text.splitlines() if ln.startswith("access to attrs=entry,"))
    assert "mailLocalAddress" in old
    p = tmp / "acl.conf"
    p.write_text(text.replace(old, old.rstrip("\n") + "," + ",".join(attrs) + "\n"))
    return p


def start(factory: SlapdFactory, tmp: Path, name: str, schemas: tuple[Path, ...],
          attrs: tuple[str, ...]) -> Slapd:  # fmt: skip
    ldif = (DATA / "schemas-common.ldif").read_bytes() + b"\n" + (DATA / name).read_bytes()
    return factory(
        ldif=None, _ldif_text=ldif, extra_schemas=schemas, acl_file=acl_with(tmp, *attrs)
    )


def example(tmp: Path, server: Slapd, name: str) -> Path:
    """The shipped example with this server's URL and a password file."""
    pw = tmp / "pw"
    pw.write_text(BIND_PASSWORD + "\n")
    out = []
    for line in (REPO / "conf" / "ldap" / name).read_text().splitlines():
        if line.startswith("servers = "):
            line = f'servers = ["{server.url}"]'
        elif line.startswith("bind_password_credential = "):
            line = f'bind_password_file = "{pw}"'
        out.append(line)
    p = tmp / name
    p.write_text("\n".join(out) + "\n")
    return p


def directory(cfg: Path) -> LdapDirectory:
    config = load_config(cfg)
    return LdapDirectory(config.ldap, config.addresses.rules())


def test_inetorgperson_mail_and_mailalternateaddress(
    slapd_factory: SlapdFactory, tmp_path: Path
) -> None:
    server = start(slapd_factory, tmp_path, "schemas-mailalternate.ldif",
                   (SCHEMA / "mailrecipient.schema",), ("mailAlternateAddress",))  # fmt: skip
    d = directory(example(tmp_path, server, "policyd-mailalternate.toml"))
    try:
        assert d.addresses_of("alice") == {
            "alice@example.org",
            "alice.smith@example.org",
            "alice@example.net",  # Alice@Example.NET, normalised
            "sales@example.org",  # the group's mail
        }
        assert d.addresses_of("bob") == {"bob@example.org"}
        assert d.owners_of("alice@example.net") == {"alice"}
        assert d.owners_of("sales@example.org") == {"alice"}
        assert d.owners_of("bob@example.org") == {"bob"}
    finally:
        d.close()


def test_postfix_book_mailalias(slapd_factory: SlapdFactory, tmp_path: Path) -> None:
    server = start(slapd_factory, tmp_path, "schemas-postfix-book.ldif",
                   (SCHEMA / "postfix-book.schema",), ("mailAlias", "mailEnabled"))  # fmt: skip
    cfg = example(tmp_path, server, "policyd-postfix-book.toml")
    d = directory(cfg)
    try:
        assert d.addresses_of("alice@example.org") == {
            "alice@example.org",
            "alice.smith@example.org",
            "info@example.org",
        }
        # full-address logins: the other alice is another person
        assert d.addresses_of("alice@example.net") == {"alice@example.net", "info@example.org"}
        assert d.addresses_of("alice") == frozenset()
        assert d.owners_of("alice.smith@example.org") == {"alice@example.org"}
        assert d.owners_of("info@example.org") == {"alice@example.org", "alice@example.net"}
        # mailEnabled=FALSE owns nothing
        assert d.addresses_of("dave@example.org") == frozenset()
        assert d.owners_of("dave.old@example.org") == frozenset()
    finally:
        d.close()
    build_runtime(load_config(cfg)).close()  # what start builds, with this config


def test_ispmail_virtual_user_table(slapd_factory: SlapdFactory, tmp_path: Path) -> None:
    server = start(slapd_factory, tmp_path, "schemas-ispmail.ldif", (), ("rfc822MailMember",))
    d = directory(example(tmp_path, server, "policyd-ispmail.toml"))
    try:
        assert d.addresses_of("alice@example.org") == {"alice@example.org", "sales@example.org"}
        assert d.addresses_of("alice@example.net") == {
            "alice@example.net",
            "postmaster@example.net",
        }
        assert d.addresses_of("bob@example.org") == {"bob@example.org", "sales@example.org"}
        assert d.owners_of("sales@example.org") == {"alice@example.org", "bob@example.org"}
        assert d.owners_of("postmaster@example.net") == {"alice@example.net"}
        assert d.owners_of("alice@example.org") == {"alice@example.org"}
    finally:
        d.close()
