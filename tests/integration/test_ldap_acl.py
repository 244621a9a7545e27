"""conf/ldap/acl.conf only adds (issue 27 item 3): a real slapd holding a mail server's
directory, whose Postfix and Dovecot bind accounts and users have their own access rules
(tests/data/acl-existing-site.conf), reads the same for all of them with the shipped ACL in
front of those rules as without it; and the policyd account reads only what it needs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest

from policyd.addresses import AddressRules
from policyd.config import LdapConfig
from policyd.directory.ldap import LdapDirectory
from tests.servers.slapd import (
    _LIVE,
    BIND_DN,
    BIND_PASSWORD,
    DIRECTORY_LDIF,
    REPO,
    Slapd,
    _run,
    binary,
)
from tests.servers.slapd_fixtures import SlapdFactory

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(120)]

BASE = "dc=example,dc=org"
SITE_ACL = REPO / "tests" / "data" / "acl-existing-site.conf"
POSTFIX = (f"cn=postfix,ou=services,{BASE}", "postfix-secret")
DOVECOT = (f"cn=dovecot,ou=services,{BASE}", "dovecot-secret")
SAM = (f"uid=sam,ou=people,{BASE}", "sam-secret")
#: what acl.conf grants the policyd account, and nothing more
POLICYD_ATTRS = {"objectclass", "uid", "cn", "mail", "maillocaladdress", "member", "entryuuid"}

EXTRA = f"""
dn: {POSTFIX[0]}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: postfix
userPassword: {POSTFIX[1]}

dn: {DOVECOT[0]}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: dovecot
userPassword: {DOVECOT[1]}

dn: {SAM[0]}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: sam
cn: Sam Site
sn: Site
telephoneNumber: +1 555 0100
mail: sam@example.org
mailLocalAddress: samuel@example.org
userPassword: {SAM[1]}
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Slapd]]:
    """ "before": the site's rules only; "after": conf/ldap/acl.conf in front of them."""
    from tests.servers.slapd_fixtures import _require

    _require()
    base = tmp_path_factory.mktemp("acl")
    ldif = DIRECTORY_LDIF.read_bytes() + EXTRA.encode()
    empty = base / "no-acl.conf"
    empty.write_text("")
    made = {
        "before": Slapd(
            base / "before", ldif=None, acl_file=empty, site_acl=SITE_ACL, _ldif_text=ldif
        ),
        "after": Slapd(base / "after", ldif=None, site_acl=SITE_ACL, _ldif_text=ldif),
    }
    try:
        for s in made.values():
            s.start()
        yield made
    finally:
        for s in made.values():
            s.stop()


def read(
    server: Slapd, who: tuple[str, str] | None, base: str, flt: str, attrs: list[str]
) -> list[tuple[str, dict[str, list[str]]]]:
    """What this account reads: (dn, {attribute: sorted values}) sorted, or an empty list."""
    user, password = who if who else (None, None)
    conn = ldap3.Connection(
        ldap3.Server(server.url, get_info=ldap3.NONE),
        user=user,
        password=password,
        auto_bind=True,
        receive_timeout=5,
    )
    try:
        conn.search(base, flt, ldap3.SUBTREE, attributes=attrs)
        out = []
        for e in conn.response or []:
            if e.get("type") != "searchResEntry":
                continue
            raw: dict[str, Any] = e["raw_attributes"]
            out.append(
                (
                    e["dn"].lower(),
                    {
                        k.lower(): sorted(v.decode() for v in vals)
                        for k, vals in raw.items()
                        if vals
                    },
                )
            )
        return sorted(out, key=lambda t: t[0])
    finally:
        conn.unbind()


#: What each existing account does: (who, base, filter, attributes)
SITE_READS = [
    # Postfix: smtpd_sender_login_maps and virtual_alias_maps by mail / mailLocalAddress
    (POSTFIX, BASE, "(mail=alice@example.org)", ["uid", "mail", "mailLocalAddress"]),
    (POSTFIX, BASE, "(mailLocalAddress=sales@example.org)", ["member", "mailLocalAddress"]),
    (POSTFIX, BASE, "(objectClass=*)", ["*"]),
    # Dovecot: passdb (password hash) and userdb by the full address
    (
        DOVECOT,
        BASE,
        "(&(objectClass=inetOrgPerson)(mail=sam@example.org))",
        ["uid", "mail", "userPassword"],
    ),
    (DOVECOT, BASE, "(objectClass=*)", ["*"]),
    # a user reads her own entry; may search (users search) but not read others
    (SAM, SAM[0], "(objectClass=*)", ["*"]),
    (SAM, BASE, "(mail=alice@example.org)", ["mail"]),
    (None, BASE, "(objectClass=*)", ["*"]),
]


@pytest.mark.parametrize(
    "who,base,flt,attrs",
    SITE_READS,
    ids=[f"{w[0].split(',')[0] if w else 'anonymous'}:{f}" for w, _, f, _ in SITE_READS],
)
def test_existing_accounts_read_what_they_read_before(
    servers: dict[str, Slapd],
    who: tuple[str, str] | None,
    base: str,
    flt: str,
    attrs: list[str],
) -> None:
    before = read(servers["before"], who, base, flt, attrs)
    after = read(servers["after"], who, base, flt, attrs)
    assert after == before


def test_the_site_rules_do_give_them_something(servers: dict[str, Slapd]) -> None:
    # (so that the comparison above compares something)
    s = servers["before"]
    [(_, alice)] = read(s, POSTFIX, BASE, "(mail=alice@example.org)", ["uid", "mail"])
    assert alice == {"uid": ["alice"], "mail": ["alice@example.org"]}
    [(_, sam)] = read(s, DOVECOT, BASE, "(mail=sam@example.org)", ["userPassword"])
    assert sam == {"userpassword": [SAM[1]]}
    [(_, own)] = read(s, SAM, SAM[0], "(objectClass=*)", ["telephoneNumber"])
    assert own == {"telephonenumber": ["+1 555 0100"]}


def test_policyd_reads_only_what_it_needs(servers: dict[str, Slapd]) -> None:
    policyd = (BIND_DN, BIND_PASSWORD)
    entries = read(servers["after"], policyd, BASE, "(objectClass=*)", ["*", "+"])
    assert entries, "the policyd account reads nothing"
    seen = set().union(*(attrs.keys() for _, attrs in entries))
    assert seen <= POLICYD_ATTRS, seen - POLICYD_ATTRS
    assert "userpassword" not in seen
    by_dn = dict(entries)
    assert by_dn[SAM[0]].pop("entryuuid")  # (the entry's identity: see Directory.identity_of)
    assert by_dn[SAM[0]] == {
        "objectclass": ["inetLocalMailRecipient", "inetOrgPerson"],
        "uid": ["sam"],
        "cn": ["Sam Site"],
        "mail": ["sam@example.org"],
        "maillocaladdress": ["samuel@example.org"],
    }
    # not even through the site's "users search": no search on other attributes either
    assert read(servers["after"], policyd, BASE, "(telephoneNumber=+1 555 0100)", ["uid"]) == []
    # and its lookups work with these rules
    cfg = LdapConfig(
        servers=(servers["after"].url,),
        bind_dn=BIND_DN,
        bind_password_file=write_pw(servers["after"].workdir),
        user_base=f"ou=people,{BASE}",
    )
    d = LdapDirectory(cfg, AddressRules())
    try:
        assert "samuel@example.org" in d.addresses_of("sam")
        assert "sales@example.org" in d.addresses_of("alice")
        assert d.owners_of("samuel@example.org") == frozenset({"sam"})
    finally:
        d.close()


def write_pw(d: Path) -> Path:
    p = d / "policyd-pw"
    p.write_text(BIND_PASSWORD + "\n")
    return p


def test_shipped_acl_is_the_tested_one() -> None:
    # every rule of the shipped file ends in `by * break` (it only adds)
    text = (REPO / "conf" / "ldap" / "acl.conf").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("access to ")]
    assert len(starts) == 3
    for i, j in zip(starts, [*starts[1:], len(lines)], strict=True):
        assert lines[j - 1] == "by * break", lines[i:j]
    _ = SlapdFactory  # (fixtures module imported for its registration)


# ---------------------------------------------------------------------------------------------
# The cn=config variant: the LDIF in acl.conf's comment, applied with ldapmodify -Y EXTERNAL to a
# running slapd.d whose database already has the site's rules as olcAccess values.


class ConfigSlapd(Slapd):
    """A slapd run from cn=config (slapd.d), with ldapi:// for root's SASL EXTERNAL."""

    def __init__(self, workdir: Path, ldif: bytes) -> None:
        empty = workdir.parent / f"{workdir.name}-no-acl.conf"
        empty.write_text("")
        self.sock_dir = Path(tempfile.mkdtemp(prefix="pdacl"))  # short: sun_path is 108 bytes
        super().__init__(workdir, ldif=None, acl_file=empty, site_acl=SITE_ACL, _ldif_text=ldif)
        self.slapd_d = self.workdir / "slapd.d"
        self.slapd_d.mkdir()
        _run([binary("slaptest"), "-f", str(self.conf), "-F", str(self.slapd_d)])

    @property
    def ldapi(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self.sock_dir / "ldapi"), safe="")

    def _slapd_conf(self) -> str:
        lines = [
            line
            for line in super()._slapd_conf().splitlines()
            if "acl-senders.conf" not in line  # (only the site's rules: the test's subject)
        ]
        i = lines.index("database mdb")
        root = "gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth"
        lines[i:i] = ["database config", f'access to * by dn.exact="{root}" manage by * none']
        return "\n".join(lines) + "\n"

    def _start(self, timeout: float) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary("slapd"), "-d", "0", "-F", str(self.slapd_d), "-h",
                 f"{self.url}/ {self.ldapi}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        _LIVE[self.proc.pid] = self.proc
        self._wait_ready(timeout)


def shipped_cn_config_ldif() -> str:
    """The ldapmodify LDIF in conf/ldap/acl.conf's comment, as an admin would copy it."""
    out: list[str] = []
    for line in (REPO / "conf" / "ldap" / "acl.conf").read_text().splitlines():
        if line.startswith("#   dn: olcDatabase="):
            out = [line[4:]]
        elif out and line.startswith("#   ") and line.strip() != "#":
            out.append(line[4:])
        elif out:
            break
    assert out and out[0].startswith("dn: olcDatabase={1}mdb,cn=config"), out
    return "\n".join(out) + "\n"


def test_cn_config_variant_only_adds(servers: dict[str, Slapd], tmp_path: Path) -> None:
    server = ConfigSlapd(tmp_path / "cnconfig", DIRECTORY_LDIF.read_bytes() + EXTRA.encode())
    try:
        server.start()
        r = subprocess.run(
            [binary("ldapmodify"), "-Q", "-Y", "EXTERNAL", "-H", server.ldapi],
            input=shipped_cn_config_ldif(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run(
            [binary("ldapsearch"), "-Q", "-LLL", "-Y", "EXTERNAL", "-H", server.ldapi, "-b",
             "olcDatabase={1}mdb,cn=config", "-o", "ldif-wrap=no", "olcAccess"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        access = [ln for ln in r.stdout.splitlines() if ln.startswith("olcAccess:")]
        # ours first ({0}..{2}), the site's two rules renumbered after them
        assert len(access) == 5, r.stdout
        assert "policyd" in access[0] and "policyd" in access[2], access
        assert "dovecot" in access[3] and "postfix" in access[4], access
        for who, base, flt, attrs in SITE_READS:
            assert read(server, who, base, flt, attrs) == read(
                servers["before"], who, base, flt, attrs
            ), (who, flt)
        policyd = (BIND_DN, BIND_PASSWORD)
        entries = read(server, policyd, BASE, "(objectClass=*)", ["*", "+"])
        seen = set().union(*(a.keys() for _, a in entries))
        assert entries and seen <= POLICYD_ATTRS, seen
    finally:
        server.stop()
        shutil.rmtree(server.sock_dir, ignore_errors=True)
