"""The LDAP backend against a real slapd (tests/servers/slapd.py, data tests/data/directory.ldif).

Tests that kill or freeze a server use their own instance (slapd_factory / fresh_slapd); the
module-scoped `slapd` is shared and only read.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd import credentials
from policyd.addresses import AddressRules, candidates, canonical_login, owned_by
from policyd.config import LdapConfig, load_config
from policyd.directory.base import DirectoryError, DirectoryUnavailable
from policyd.directory.ldap import (
    LdapDirectory,
    check_connection,
    default_group_base,
    escape_value,
    parse_server_url,
    read_bind_password,
    render_filter,
)
from tests.servers.slapd import EXAMPLE_BIND_PASSWORD, EXAMPLE_LDIF, REPO, Slapd, free_port
from tests.servers.slapd_fixtures import SlapdFactory

pytestmark = pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning")
slapd_test = pytest.mark.slapd

RULES = AddressRules(realms=frozenset({"example.org"}))
PEOPLE = "ou=people,dc=example,dc=org"

ALICE = frozenset(
    {
        "alice@example.org",
        "alice.smith@example.org",
        "alice@example.net",
        "sales@example.org",
    }
)
BOB = frozenset({"bob@example.org", "sales@example.org"})
CAROL = frozenset({"carol@example.org", "@carol.example", "support@example.org"})
DAVE = frozenset({"dave@example.org"})
EVIL = frozenset({"evil@example.org", "support@example.org"})
ERIN = frozenset({"erin@partner.example"})
EVERYONE = ALICE | BOB | CAROL | DAVE | EVIL | ERIN | {"twin1@example.org", "twin2@example.org"}


def password_file(tmp: Path, password: str, name: str = "bind-password") -> Path:
    p = tmp / name
    p.write_text(password + "\n")
    p.chmod(0o600)
    return p


def make_cfg(server: Slapd, pwfile: Path, **changes: object) -> LdapConfig:
    cfg = LdapConfig(
        servers=(server.url,),
        bind_dn=server.bind_dn,
        bind_password_file=pwfile,
        user_base=PEOPLE,
        connect_timeout=1,
        receive_timeout=1,
    )
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pwfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return password_file(tmp_path_factory.mktemp("ldap-pw"), "policyd-secret")


@pytest.fixture(scope="module")
def directory(slapd: Slapd, pwfile: Path) -> Iterator[LdapDirectory]:
    d = LdapDirectory(make_cfg(slapd, pwfile), RULES)
    yield d
    d.close()


# ---------------------------------------------------------------------------------------------
# Pure helpers (no server)


@pytest.mark.parametrize(
    "value, escaped",
    [
        ("alice", "alice"),
        ("*", r"\2a"),
        ("alice)(uid=*", r"alice\29\28uid=\2a"),
        (r"\2a", r"\5c2a"),
        ("a\x00b", r"a\00b"),
        ("jöhn", "jöhn"),
        ("\udcff\udcfe", r"\ff\fe"),  # surrogateescape'd bytes b"\xff\xfe"
        ("x\udcc3(", r"\78\c3\28"),  # mixed: every byte escaped
        ("\ud800", r"\ed\a0\80"),  # a lone surrogate that is no escaped byte
        (" a\t", r"\20a\09"),  # ldap3 would strip() unescaped edge spaces
        ("a>=b~=c<=d:=e=f", "a>=b~=c<=d:=e=f"),  # ldap3 splits at the first "=": harmless
    ],
)
def test_escape_value(value: str, escaped: str) -> None:
    out = escape_value(value)
    assert out == escaped
    assert "\x00" not in out and "(" not in out and ")" not in out and "*" not in out
    out.encode("utf-8")  # always sendable


def test_render_filter_escapes_every_value() -> None:
    f = render_filter(
        "(&(uid={login})(mail={localpart}@{domain}))",
        login="*)(uid=*",
        localpart="a*",
        domain="(x)",
    )
    assert f == r"(&(uid=\2a\29\28uid=\2a)(mail=a\2a@\28x\29))"


@pytest.mark.parametrize(
    "user_base, group_base",
    [
        ("ou=people,dc=example,dc=org", "dc=example,dc=org"),
        ("dc=example,dc=org", "dc=example,dc=org"),
        ("ou=people,o=corp", "o=corp"),
        (r"ou=a\,b,DC=Example,dc=org", "DC=Example,dc=org"),
    ],
)
def test_default_group_base(user_base: str, group_base: str) -> None:
    assert default_group_base(user_base) == group_base


def test_parse_server_url() -> None:
    s = parse_server_url("ldap://ldap.example.org", start_tls=True)
    assert (s.scheme, s.host, s.port, s.start_tls, s.tls) == (
        "ldap",
        "ldap.example.org",
        389,
        True,
        True,
    )
    s = parse_server_url("ldaps://[::1]:6360/", start_tls=True)
    assert (s.scheme, s.host, s.port, s.start_tls, s.tls) == ("ldaps", "::1", 6360, False, True)
    s = parse_server_url("ldapi://%2Frun%2Fslapd%2Fldapi", start_tls=False)
    assert (s.scheme, s.host) == ("ldapi", "/run/slapd/ldapi")
    for bad in ("http://x", "ldap://x/dc=example", "ldap://x:99999", "ldap://"):
        with pytest.raises(DirectoryError):
            parse_server_url(bad, start_tls=False)


def test_bind_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = LdapConfig(bind_dn="cn=x")
    assert read_bind_password(LdapConfig()) is None  # anonymous
    f = tmp_path / "pw"
    f.write_bytes(b"s3cret\n\n")  # only ONE trailing newline is stripped
    assert read_bind_password(dataclasses.replace(base, bind_password_file=f)) == "s3cret\n"
    f.write_bytes(b"s3cret\r\n")
    assert read_bind_password(dataclasses.replace(base, bind_password_file=f)) == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ldap-bind-password").write_text("from-systemd\n")
    cfg = dataclasses.replace(base, bind_password_credential="ldap-bind-password")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(credentials, "CREDSTORE_DIRS", (tmp_path / "credstore",))
    monkeypatch.setattr(credentials, "CREDSTORE_ENCRYPTED_DIRS", ())
    with pytest.raises(DirectoryError, match="not set.*credstore"):
        read_bind_password(cfg)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_bind_password(cfg) == "from-systemd"
    with pytest.raises(DirectoryError, match="cannot read"):
        read_bind_password(dataclasses.replace(base, bind_password_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(DirectoryError, match="empty"):
        read_bind_password(dataclasses.replace(base, bind_password_file=tmp_path / "empty"))


def test_construction_errors(tmp_path: Path) -> None:
    pw = password_file(tmp_path, "x")
    ok = LdapConfig(bind_dn="cn=x", bind_password_file=pw)
    LdapDirectory(ok, RULES).close()  # no connection attempted at construction
    with pytest.raises(DirectoryError, match="user_filter"):
        LdapDirectory(dataclasses.replace(ok, user_filter="(uid={login}"), RULES)
    with pytest.raises(DirectoryError, match="ca_file"):
        LdapDirectory(dataclasses.replace(ok, ca_file=tmp_path / "nope.pem"), RULES)
    with pytest.raises(DirectoryError, match="servers"):
        LdapDirectory(dataclasses.replace(ok, servers=("ldap://h/dc=x",)), RULES)


def test_tls_validate_false_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = LdapConfig(servers=("ldaps://127.0.0.1",), tls_validate=False)
    with caplog.at_level(logging.WARNING, logger="policyd.directory.ldap"):
        LdapDirectory(cfg, RULES).close()
    assert any(
        "tls_validate = false" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )


# ---------------------------------------------------------------------------------------------
# Lookups against the shared slapd


@slapd_test
def test_user_with_several_addresses(directory: LdapDirectory) -> None:
    assert directory.addresses_of("alice") == ALICE  # mixed case in LDAP, normalised here
    assert directory.addresses_of("dave") == DAVE


@slapd_test
def test_logins_with_and_without_realm(directory: LdapDirectory) -> None:
    for raw in ("alice", "alice@example.org", "Alice@Example.ORG", "ALICE"):
        assert directory.addresses_of(canonical_login(raw, RULES)) == ALICE, raw
    # A realm that is not local stays part of the login.
    assert directory.addresses_of(canonical_login("Erin@Partner.Example", RULES)) == ERIN
    assert directory.addresses_of(canonical_login("alice@partner.example", RULES)) == frozenset()
    # Without realms configured, "alice@example.org" is a different (unknown) login.
    assert (
        directory.addresses_of(canonical_login("alice@example.org", AddressRules())) == frozenset()
    )


@slapd_test
def test_uid_case_in_directory_does_not_matter(directory: LdapDirectory) -> None:
    assert directory.addresses_of("bob") == BOB  # the entry's uid is "Bob"


@slapd_test
def test_ownership_checks(directory: LdapDirectory) -> None:
    alice = directory.addresses_of("alice")
    for sender in (
        "alice@example.org",
        "Alice@Example.ORG",
        "alice+lists@example.org",
        "Alice.Smith+x@EXAMPLE.org",
        "alice@example.net",
        "sales@example.org",
        "sales+q@example.org",
    ):
        assert owned_by(alice, sender, RULES), sender
    for sender in (
        "bob@example.org",
        "alice@example.com",
        "x@carol.example",
        "support@example.org",
    ):
        assert not owned_by(alice, sender, RULES), sender
    carol = directory.addresses_of("carol")
    for sender in ("anyone@carol.example", "X+y@Carol.Example.", "carol@example.org"):
        assert owned_by(carol, sender, RULES), sender
    assert not owned_by(carol, "anyone@sub.carol.example", RULES)


@slapd_test
def test_group_addresses_for_members_only(directory: LdapDirectory) -> None:
    assert "sales@example.org" in directory.addresses_of("alice")
    assert "sales@example.org" in directory.addresses_of("bob")
    assert "sales@example.org" not in directory.addresses_of("dave")
    assert "sales@example.org" not in directory.addresses_of("carol")
    assert "support@example.org" in directory.addresses_of("carol")


@slapd_test
def test_unknown_login(directory: LdapDirectory) -> None:
    assert directory.addresses_of("nobody") == frozenset()
    assert directory.addresses_of("") == frozenset()
    # The bind account and groups are not users.
    assert directory.addresses_of("policyd") == frozenset()
    assert directory.addresses_of("sales") == frozenset()


@slapd_test
def test_ambiguous_login_is_unknown(
    directory: LdapDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="policyd.directory.ldap"):
        assert directory.addresses_of("twin") == frozenset()
    assert any("more than one entry" in r.getMessage() for r in caplog.records)


INJECTIONS = [
    "*",
    "**",
    "alice*",
    "al*ce",
    "*)(|(uid=*",
    "alice)(uid=*",
    "alice)(|(uid=*)",
    "*)(uid=*))(|(uid=*",
    r"\2a",
    r"\\2a",
    "\\",
    "\\5c",
    ")(",
    "(",
    ")",
    "(uid=alice)",
    "alice\x00",
    "\x00",
    "\x00*",
    "alice\x00)(uid=*",
    "\udcff\udcfe",
    "alice\udcff",
    "\ud800",
    "a" * 3000,
    "alice\r\n(uid=*)",
    "uid=alice,ou=people,dc=example,dc=org",
    # Not here: "alice\n" or "alice " - LDAP string matching ignores such insignificant spaces
    # (RFC 4518), so they find alice. Logins arrive stripped (canonical_login), so that's moot.
]


@slapd_test
@pytest.mark.parametrize("login", INJECTIONS)
def test_injection_in_login(directory: LdapDirectory, login: str) -> None:
    # Not even DirectoryUnavailable (which would be allowed): slapd sees a well-formed filter.
    got = directory.addresses_of(login)
    assert got == frozenset(), f"{login!r} matched {sorted(got)}"


@slapd_test
def test_literal_special_characters_match_exactly(directory: LdapDirectory) -> None:
    assert directory.addresses_of("evil*)(uid=*") == EVIL
    assert directory.owners_of("evil@example.org") == {"evil*)(uid=*"}


@slapd_test
@pytest.mark.parametrize(
    "address",
    [
        "*@example.org",
        "*",
        "*@*",
        "alice*@example.org",
        "*)(mail=*@example.org",
        "a@example.org)(mail=*",
        r"\2a@example.org",
        "x\x00@example.org",
        "\udcff@example.org",
        "@*",
        "sales@*",
        "*@carol.example)(|(mail=*",
    ],
)
def test_injection_in_address(directory: LdapDirectory, address: str) -> None:
    got = directory.owners_of(address)
    # "*@carol.example)..." has a domain ending that is not carol.example: no owner either.
    assert got == frozenset(), f"{address!r} owned by {sorted(got)}"


_surrogate_text = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
_ldap_chars = st.text(alphabet="*()\\\x00=|&!<>~,+aAlLiIcCeE@. ", max_size=30)


@slapd_test
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(login=st.one_of(st.text(max_size=40), _surrogate_text, _ldap_chars))
def test_any_login_matches_only_its_own_entry(directory: LdapDirectory, login: str) -> None:
    login = canonical_login(login, RULES)
    got = directory.addresses_of(login)  # never raises: every value is escaped
    own = {
        "alice": ALICE,
        "bob": BOB,
        "carol": CAROL,
        "dave": DAVE,
        "evil*)(uid=*": EVIL,
        "erin@partner.example": ERIN,
    }
    assert got == own.get(login, frozenset()), f"{login!r} -> {sorted(got)}"


@slapd_test
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    local=st.one_of(_ldap_chars, _surrogate_text),
    domain=st.sampled_from(["example.org", "carol.example", "*", "example.org)(mail=*", "\x00"]),
)
def test_any_address_never_raises(directory: LdapDirectory, local: str, domain: str) -> None:
    got = first_owners(directory, f"{local}@{domain}")
    if domain == "carol.example":
        assert got == {"carol"}
    else:
        assert got <= {"alice", "bob", "carol", "dave", "evil*)(uid=*", "twin"}
        assert "*" not in local or got == frozenset()


@slapd_test
def test_owners_of(directory: LdapDirectory) -> None:
    assert first_owners(directory, "alice@example.org") == {"alice"}
    assert first_owners(directory, "ALICE.SMITH@Example.org") == {"alice"}
    assert first_owners(directory, "alice+tag@example.org") == {"alice"}  # extension stripped
    assert first_owners(directory, "alice@example.net") == {"alice"}
    assert first_owners(directory, "Bob@Example.org") == {"bob"}  # uid "Bob" canonical
    assert first_owners(directory, "sales@example.org") == {"alice", "bob"}  # via the group
    assert first_owners(directory, "sales+x@example.org") == {"alice", "bob"}
    assert first_owners(directory, "anyone@carol.example") == {"carol"}  # via @domain
    assert first_owners(directory, "support@example.org") == {"carol", "evil*)(uid=*"}  # entry read
    assert first_owners(directory, "nobody@example.org") == frozenset()
    assert first_owners(directory, "") == frozenset()
    assert first_owners(directory, "no-domain") == frozenset()
    # owners_of itself answers for exactly one key: no extension or @domain fallback
    assert directory.owners_of("alice+tag@example.org") == frozenset()
    assert directory.owners_of("anyone@carol.example") == frozenset()
    assert directory.owners_of("@carol.example") == {"carol"}
    assert directory.owners_of("sales@example.org") == {"alice", "bob"}


def first_owners(directory: LdapDirectory, sender: str) -> frozenset[str]:
    """The owners of the most specific key of `sender` that has any (what Postfix's
    smtpd_sender_login_maps search returns)."""
    for key in candidates(sender, RULES):
        found = directory.owners_of(key)
        if found:
            return found
    return frozenset()


@slapd_test
def test_owners_of_with_realm_logins(slapd: Slapd, pwfile: Path) -> None:
    # With no local realm, owner logins are reported as stored ("erin@partner.example").
    d = LdapDirectory(make_cfg(slapd, pwfile), AddressRules())
    try:
        assert d.owners_of("erin@partner.example") == {"erin@partner.example"}
    finally:
        d.close()


@slapd_test
def test_bind_account_cannot_read_passwords(slapd: Slapd) -> None:
    def read(user: str, pw: str) -> dict[str, list[bytes]]:
        conn = ldap3.Connection(
            ldap3.Server(slapd.url, get_info=ldap3.NONE),
            user,
            pw,
            client_strategy=ldap3.SAFE_SYNC,
            receive_timeout=2,
        )
        try:
            assert conn.bind()[0]
            _, _, resp, _ = conn.search(PEOPLE, "(uid=alice)", attributes=["userPassword", "mail"])
            assert len(resp) == 1
            return dict(resp[0]["raw_attributes"])
        finally:
            conn.unbind()

    as_policyd = read(slapd.bind_dn, slapd.bind_password)
    assert as_policyd.get("mail") == [b"alice@example.org"]
    assert not as_policyd.get("userPassword")
    as_admin = read(slapd.admin_dn, slapd.admin_password)
    assert as_admin.get("userPassword")  # it is there; policyd just may not see it
    # Nor can it search on it (a filter on userPassword matches nothing).
    conn = ldap3.Connection(
        ldap3.Server(slapd.url, get_info=ldap3.NONE),
        slapd.bind_dn,
        slapd.bind_password,
        client_strategy=ldap3.SAFE_SYNC,
    )
    try:
        conn.bind()
        _, _, resp, _ = conn.search(PEOPLE, "(userPassword=*)", attributes=["uid"])
        assert resp == []
    finally:
        conn.unbind()


@slapd_test
def test_threads_get_their_own_answers(directory: LdapDirectory) -> None:
    expected = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}
    errors: list[str] = []

    def work(login: str) -> None:
        for _ in range(40):
            got = directory.addresses_of(login)
            if got != expected[login]:
                errors.append(f"{login}: {sorted(got)}")

    threads = [threading.Thread(target=work, args=(login,)) for login in expected for _ in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


@slapd_test
def test_closed_directory_is_unavailable(slapd: Slapd, pwfile: Path) -> None:
    d = LdapDirectory(make_cfg(slapd, pwfile), RULES)
    assert d.addresses_of("alice") == ALICE
    d.close()
    with pytest.raises(DirectoryUnavailable, match="closed"):
        d.addresses_of("alice")


# ---------------------------------------------------------------------------------------------
# Configuration problems: bind, search base, TLS, check_connection


@slapd_test
def test_wrong_bind_password(
    slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-password-x7"
    cfg = make_cfg(slapd, password_file(tmp_path, wrong))
    d = LdapDirectory(cfg, RULES)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(DirectoryUnavailable, match="bind failed: invalidCredentials") as ei:
            d.addresses_of("alice")
        ok, lines = check_connection(cfg)
    d.close()
    assert not ok
    assert any("bind: FAILED: bind failed: invalidCredentials" in line for line in lines), lines
    text = "\n".join(lines) + str(ei.value) + caplog.text
    assert wrong not in text


@slapd_test
def test_missing_search_base(slapd: Slapd, pwfile: Path) -> None:
    cfg = make_cfg(slapd, pwfile, user_base="ou=nope,dc=example,dc=org")
    d = LdapDirectory(cfg, RULES)
    with pytest.raises(DirectoryUnavailable, match="ou=nope,dc=example,dc=org.*does not exist"):
        d.addresses_of("alice")
    d.close()
    ok, lines = check_connection(cfg)
    assert not ok
    assert any(
        "search base user_base: FAILED" in line and "noSuchObject" in line for line in lines
    ), lines


@slapd_test
def test_check_connection_all_good(slapd: Slapd, pwfile: Path) -> None:
    cfg = make_cfg(
        slapd,
        pwfile,
        servers=(slapd.url, slapd.ldaps_url),
        start_tls=True,
        ca_file=slapd.pki.ca_cert if slapd.pki else None,
    )
    ok, lines = check_connection(cfg)
    assert ok, lines
    steps = [line.split(": ")[1] for line in lines]
    for step in (
        "password",
        "dns",
        "tcp",
        "tls",
        "bind",
        "search base user_base",
        "search base group_base",
    ):
        assert step in steps, (step, lines)
    assert "policyd-secret" not in "\n".join(lines)


@slapd_test
@pytest.mark.timeout(60)
def test_check_connection_dns_and_tcp(pwfile: Path, slapd: Slapd) -> None:
    cfg = make_cfg(
        slapd, pwfile, servers=("ldap://no-such-host.invalid", f"ldap://127.0.0.1:{free_port()}")
    )
    t0 = time.monotonic()
    ok, lines = check_connection(cfg)
    assert time.monotonic() - t0 < 30  # .invalid never resolves; a slow resolver may take a while
    assert not ok
    assert any("no-such-host.invalid: dns: FAILED" in line for line in lines), lines
    assert any(": tcp: FAILED" in line and "refused" in line for line in lines), lines


@slapd_test
@pytest.mark.parametrize("how", ["starttls", "ldaps"])
def test_tls_with_right_ca(slapd: Slapd, pwfile: Path, how: str) -> None:
    assert slapd.pki is not None
    url = slapd.url if how == "starttls" else slapd.ldaps_url
    cfg = make_cfg(
        slapd, pwfile, servers=(url,), start_tls=how == "starttls", ca_file=slapd.pki.ca_cert
    )
    d = LdapDirectory(cfg, RULES)
    try:
        assert d.addresses_of("alice") == ALICE
        conn = d._local.conn.conn
        assert isinstance(conn.socket, ssl.SSLSocket)  # really encrypted
    finally:
        d.close()


@slapd_test
@pytest.mark.parametrize("how", ["starttls", "ldaps"])
def test_tls_with_wrong_ca(slapd: Slapd, pwfile: Path, how: str) -> None:
    assert slapd.pki is not None
    url = slapd.url if how == "starttls" else slapd.ldaps_url
    cfg = make_cfg(
        slapd, pwfile, servers=(url,), start_tls=how == "starttls", ca_file=slapd.pki.wrong_ca_cert
    )
    d = LdapDirectory(cfg, RULES)
    with pytest.raises(
        DirectoryUnavailable, match="TLS handshake failed.*CERTIFICATE_VERIFY_FAILED"
    ):
        d.addresses_of("alice")
    d.close()
    ok, lines = check_connection(cfg)
    assert not ok
    assert any(": tls: FAILED: TLS handshake failed" in line for line in lines), lines
    # Without validation the wrong CA is accepted (and a warning was logged at construction).
    d = LdapDirectory(dataclasses.replace(cfg, tls_validate=False), RULES)
    try:
        assert d.addresses_of("alice") == ALICE
    finally:
        d.close()


@slapd_test
def test_starttls_hostname_mismatch(slapd: Slapd, pwfile: Path) -> None:
    # The certificate names 127.0.0.1 and localhost; "127.1" reaches the same server.
    assert slapd.pki is not None
    cfg = make_cfg(
        slapd,
        pwfile,
        servers=(slapd.url.replace("127.0.0.1", "127.1"),),
        start_tls=True,
        ca_file=slapd.pki.ca_cert,
    )
    d = LdapDirectory(cfg, RULES)
    try:
        with pytest.raises(DirectoryUnavailable, match="does not match the host name"):
            d.addresses_of("alice")
    finally:
        d.close()


@slapd_test
def test_password_from_systemd_credential(
    slapd: Slapd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file(tmp_path, slapd.bind_password, name="ldap-bind-password")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = dataclasses.replace(
        make_cfg(slapd, tmp_path / "unused"),
        bind_password_file=None,
        bind_password_credential="ldap-bind-password",
    )
    d = LdapDirectory(cfg, RULES)
    try:
        assert d.addresses_of("alice") == ALICE
    finally:
        d.close()


# ---------------------------------------------------------------------------------------------
# Faults: each test has its own slapd


@slapd_test
@pytest.mark.timeout(60)
def test_killed_then_restarted(fresh_slapd: Slapd, tmp_path: Path) -> None:
    d = LdapDirectory(
        make_cfg(fresh_slapd, password_file(tmp_path, fresh_slapd.bind_password)), RULES
    )
    try:
        assert d.addresses_of("alice") == ALICE
        fresh_slapd.kill()
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(DirectoryUnavailable, match="refused|closed"):
                d.addresses_of("alice")
            assert time.monotonic() - t0 < 0.5
        fresh_slapd.start()
        assert d.addresses_of("alice") == ALICE  # same object, no restart of policyd
        assert d.owners_of("sales@example.org") == {"alice", "bob"}
    finally:
        d.close()


@slapd_test
@pytest.mark.timeout(60)
def test_restart_between_calls_is_invisible(fresh_slapd: Slapd, tmp_path: Path) -> None:
    # The kept connection is dead after a restart; the call retries once on a new one.
    d = LdapDirectory(
        make_cfg(fresh_slapd, password_file(tmp_path, fresh_slapd.bind_password)), RULES
    )
    try:
        assert d.addresses_of("alice") == ALICE
        fresh_slapd.stop()
        fresh_slapd.start()
        assert d.addresses_of("alice") == ALICE
    finally:
        d.close()


@slapd_test
@pytest.mark.timeout(60)
def test_frozen_server_times_out(fresh_slapd: Slapd, tmp_path: Path) -> None:
    cfg = make_cfg(
        fresh_slapd,
        password_file(tmp_path, fresh_slapd.bind_password),
        receive_timeout=1,
        connect_timeout=1,
    )
    d = LdapDirectory(cfg, RULES)
    try:
        assert d.addresses_of("alice") == ALICE
        fresh_slapd.freeze()
        # On the open connection: the search times out.
        t0 = time.monotonic()
        with pytest.raises(DirectoryUnavailable, match="timed out"):
            d.addresses_of("alice")
        assert 0.8 < time.monotonic() - t0 < 2.0
        # On a new connection: TCP is accepted, the bind times out.
        t0 = time.monotonic()
        with pytest.raises(DirectoryUnavailable, match="timed out"):
            d.addresses_of("bob")
        assert time.monotonic() - t0 < 2.0
        # A fresh directory (nothing open yet) is bounded the same way.
        d2 = LdapDirectory(cfg, RULES)
        t0 = time.monotonic()
        with pytest.raises(DirectoryUnavailable, match="timed out"):
            d2.owners_of("alice@example.org")
        assert time.monotonic() - t0 < 2.0
        d2.close()
        fresh_slapd.thaw()
        assert d.addresses_of("alice") == ALICE
    finally:
        fresh_slapd.thaw()
        d.close()


@slapd_test
@pytest.mark.timeout(60)
def test_failover_when_first_server_killed(slapd_factory: SlapdFactory, tmp_path: Path) -> None:
    primary = slapd_factory()
    replica = slapd_factory.replica(primary)
    cfg = make_cfg(
        primary, password_file(tmp_path, primary.bind_password), servers=(primary.url, replica.url)
    )
    d = LdapDirectory(cfg, RULES)
    try:
        assert d.addresses_of("alice") == ALICE
        assert d._local.conn.index == 0  # the first server is preferred
        primary.kill()
        t0 = time.monotonic()
        assert d.addresses_of("alice") == ALICE  # no error: answered by the replica
        assert time.monotonic() - t0 < 0.5
        assert d._local.conn.index == 1
        assert d.owners_of("sales@example.org") == {"alice", "bob"}
        # A new directory (fresh connections) goes straight to the replica too.
        d2 = LdapDirectory(cfg, RULES)
        assert d2.addresses_of("bob") == BOB
        d2.close()
        # Other threads fail over as well.
        results: list[object] = []

        def work() -> None:
            try:
                results.append(d.addresses_of("carol"))
            except Exception as e:
                results.append(e)

        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        assert results == [CAROL] * 4
    finally:
        d.close()


@slapd_test
@pytest.mark.timeout(60)
def test_failover_when_first_server_frozen(slapd_factory: SlapdFactory, tmp_path: Path) -> None:
    primary = slapd_factory()
    replica = slapd_factory.replica(primary)
    cfg = make_cfg(
        primary,
        password_file(tmp_path, primary.bind_password),
        servers=(primary.url, replica.url),
        receive_timeout=1,
        connect_timeout=1,
    )
    d = LdapDirectory(cfg, RULES)
    try:
        assert d.addresses_of("alice") == ALICE
        primary.freeze()
        # The first call on the hung connection costs one receive_timeout and fails ...
        t0 = time.monotonic()
        with pytest.raises(DirectoryUnavailable, match="timed out"):
            d.addresses_of("alice")
        assert time.monotonic() - t0 < 2.0
        # ... then the frozen server is skipped: answers come from the replica at once.
        for login, want in (("alice", ALICE), ("bob", BOB)):
            t0 = time.monotonic()
            assert d.addresses_of(login) == want
            assert time.monotonic() - t0 < 0.5
        # A new directory that starts while the first server hangs: one slow call at most.
        d2 = LdapDirectory(cfg, RULES)
        failures = 0
        t0 = time.monotonic()
        for _ in range(3):
            try:
                assert d2.addresses_of("dave") == DAVE
            except DirectoryUnavailable:
                failures += 1
        assert failures <= 1 and time.monotonic() - t0 < 3.0
        d2.close()
    finally:
        primary.thaw()
        d.close()


@slapd_test
@pytest.mark.timeout(60)
def test_restarted_primary_is_not_avoided(slapd_factory: SlapdFactory, tmp_path: Path) -> None:
    # A kept connection that the server closed (restart, idletimeout) is not a server failure.
    primary = slapd_factory()
    replica = slapd_factory.replica(primary)
    cfg = make_cfg(
        primary, password_file(tmp_path, primary.bind_password), servers=(primary.url, replica.url)
    )
    d = LdapDirectory(cfg, RULES)
    try:
        assert d.addresses_of("alice") == ALICE
        primary.stop()
        primary.start()
        assert d.addresses_of("alice") == ALICE
        assert d._local.conn.index == 0
    finally:
        d.close()


@slapd_test
@pytest.mark.timeout(60)
def test_failback_to_the_first_server(
    slapd_factory: SlapdFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import policyd.directory.ldap.directory as mod

    monkeypatch.setattr(mod, "_DOWN_FOR", 0.2)
    monkeypatch.setattr(mod, "_FAILBACK_AFTER", 0.3)
    primary = slapd_factory()
    replica = slapd_factory.replica(primary)
    cfg = make_cfg(
        primary,
        password_file(tmp_path, primary.bind_password),
        servers=(primary.url, replica.url),
        receive_timeout=1,
        connect_timeout=1,
    )
    d = LdapDirectory(cfg, RULES)
    try:
        assert d.addresses_of("alice") == ALICE
        primary.kill()
        assert d.addresses_of("alice") == ALICE
        assert d._local.conn.index == 1
        # Back, after the down period: the next failback check reconnects to it.
        primary.start()
        time.sleep(0.5)
        assert d.addresses_of("alice") == ALICE
        assert d._local.conn.index == 0
        # Failback to a frozen first server costs one receive_timeout but fails nothing.
        primary.kill()
        assert d.addresses_of("bob") == BOB and d._local.conn.index == 1
        primary.start()
        primary.freeze()
        time.sleep(0.5)
        t0 = time.monotonic()
        assert d.addresses_of("bob") == BOB
        assert time.monotonic() - t0 < 2.0
        assert d._local.conn.index == 1
        t0 = time.monotonic()
        assert d.addresses_of("bob") == BOB
        assert time.monotonic() - t0 < 0.5
    finally:
        primary.thaw()
        d.close()


@slapd_test
@pytest.mark.timeout(60)
def test_threads_through_an_outage(fresh_slapd: Slapd, tmp_path: Path) -> None:
    d = LdapDirectory(
        make_cfg(fresh_slapd, password_file(tmp_path, fresh_slapd.bind_password)), RULES
    )
    stop = threading.Event()
    bad: list[BaseException] = []
    ok_after: list[int] = [0]

    def work() -> None:
        while not stop.is_set():
            try:
                assert d.addresses_of("alice") == ALICE
                ok_after[0] += 1
            except DirectoryUnavailable:
                time.sleep(0.01)
            except BaseException as e:
                bad.append(e)
                return

    ts = [threading.Thread(target=work) for _ in range(4)]
    try:
        for t in ts:
            t.start()
        time.sleep(0.3)
        fresh_slapd.kill()
        time.sleep(0.3)
        fresh_slapd.start()
        ok_after[0] = 0
        deadline = time.monotonic() + 5
        while ok_after[0] < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ok_after[0] >= 50, "lookups did not resume after the restart"
    finally:
        stop.set()
        for t in ts:
            t.join(10)
        d.close()
    assert bad == []


# ---------------------------------------------------------------------------------------------
# The shipped example: conf/ldap/policyd-ldap.toml + conf/ldap/example.ldif + acl.conf


@slapd_test
def test_shipped_example(slapd_factory: SlapdFactory, tmp_path: Path) -> None:
    config = load_config(REPO / "conf" / "ldap" / "policyd-ldap.toml")
    assert config.directory.backend == "ldap"
    server = slapd_factory(ldif=EXAMPLE_LDIF)  # also loads conf/ldap/acl.conf
    assert server.pki is not None
    # Point the shipped config at this server; everything else as shipped (StartTLS included).
    ldap_cfg = dataclasses.replace(
        config.ldap,
        servers=(server.url,),
        ca_file=server.pki.ca_cert,
        bind_password_credential="",
        bind_password_file=password_file(tmp_path, EXAMPLE_BIND_PASSWORD),
    )
    rules = config.addresses.rules()
    ok, lines = check_connection(ldap_cfg)
    assert ok, lines
    d = LdapDirectory(ldap_cfg, rules)
    try:
        jane = d.addresses_of(canonical_login("jane@example.org", rules))
        assert jane == {
            "jane@example.org",
            "jane.doe@example.org",
            "jane@example.net",
            "info@example.org",
        }
        john = d.addresses_of("john")
        assert owned_by(john, "anything@john.example", rules)
        assert "info@example.org" in john
        assert d.owners_of("info@example.org") == {"jane", "john"}
        assert first_owners(d, "x@john.example") == {"john"}
    finally:
        d.close()
