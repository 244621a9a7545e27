"""store = "ldap" against a real slapd with the shipped schema and ACL
(conf/ldap/policyd-senders.schema, conf/ldap/acl-senders.conf, loaded by tests/servers/slapd.py):
the read-only bind cannot write, the writer bind writes only that attribute, the lookups see
it, a failing writer leaves the request pending, a failed commit is undone in the directory,
and a revocation beats this instance's LDAP cache."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import ldap3
import pytest

from policyd.addresses import AddressRules
from policyd.config import CacheConfig, LdapConfig
from policyd.config.verification import VerificationLdapConfig
from policyd.directory.cache import CachedLookups, LookupRunner
from policyd.directory.ldap import LdapDirectory
from policyd.verification.ldap_writer import LdapWriter
from policyd.verification.lookups import SourcedLookups
from policyd.verification.source import VerifiedSource
from policyd.verification.views import Actor, Refused
from policyd.verification.writes import WriterError
from tests.servers.slapd import Slapd
from tests.verification_helpers import code_of, make_api

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(90)]

PEOPLE = "ou=people,dc=example,dc=org"
WRITER_DN = "cn=policyd-writer,ou=services,dc=example,dc=org"
WRITER_PASSWORD = "writer-secret"
ATTR = "policydSenderAddress"
ALICE_DN = f"uid=alice,{PEOPLE}"
X = "x@elsewhere.test"
ALICE = Actor("alice", "192.0.2.10")
RULES = AddressRules(realms=frozenset({"example.org"}))


def secret_file(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text + "\n")
    p.chmod(0o600)
    return p


def bind(server: Slapd, dn: str, password: str) -> Any:
    conn = ldap3.Connection(
        ldap3.Server(server.url, get_info=ldap3.NONE, connect_timeout=2),
        user=dn,
        password=password,
        client_strategy=ldap3.SAFE_SYNC,
        receive_timeout=2,
        raise_exceptions=False,
    )
    ok, result, _, _ = conn.bind()
    assert ok, result
    return conn


def values(server: Slapd) -> set[str]:
    admin = bind(server, server.admin_dn, server.admin_password)
    _, _, resp, _ = admin.search(ALICE_DN, "(objectClass=*)", ldap3.BASE, attributes=[ATTR])
    admin.unbind()
    return {v.lower() for v in resp[0]["attributes"].get(ATTR, [])}


@pytest.fixture
def server(slapd_factory: Any) -> Slapd:
    s: Slapd = slapd_factory(tls=False)
    admin = bind(s, s.admin_dn, s.admin_password)
    ok, result, _, _ = admin.add(
        WRITER_DN,
        ["applicationProcess", "simpleSecurityObject"],
        {"cn": "policyd-writer", "userPassword": WRITER_PASSWORD},
    )
    assert ok, result
    admin.unbind()
    return s


def configs(
    server: Slapd, tmp: Path, writer_password: str = WRITER_PASSWORD
) -> tuple[LdapConfig, VerificationLdapConfig]:
    cfg = LdapConfig(
        servers=(server.url,),
        bind_dn=server.bind_dn,
        bind_password_file=secret_file(tmp, "bind-pw", server.bind_password),
        user_base=PEOPLE,
        user_attributes=("mail", "mailLocalAddress", ATTR),
        connect_timeout=1,
        receive_timeout=1,
    )
    wc = VerificationLdapConfig(
        writer_bind_dn=WRITER_DN,
        writer_password_file=secret_file(tmp, "writer-pw", writer_password),
    )
    return cfg, wc


def test_the_read_only_bind_cannot_write_the_attribute(server: Slapd) -> None:
    conn = bind(server, server.bind_dn, server.bind_password)
    _, result, _, _ = conn.modify(ALICE_DN, {ATTR: [(ldap3.MODIFY_ADD, [X])]})
    assert result["result"] == 50  # insufficientAccessRights
    _, result, _, _ = conn.modify(
        ALICE_DN,
        {"objectClass": [(ldap3.MODIFY_ADD, ["policydSender"])], ATTR: [(ldap3.MODIFY_ADD, [X])]},
    )
    assert result["result"] == 50
    conn.unbind()
    assert values(server) == set()


def test_the_writer_writes_only_that_attribute(server: Slapd, tmp_path: Path) -> None:
    cfg, wc = configs(server, tmp_path)
    w = LdapWriter(cfg, wc, RULES)
    assert w.add("alice", X) is True  # the entry gets the auxiliary class in the same modify
    assert w.add("alice", X.upper()) is False  # caseIgnoreIA5Match: already so
    assert values(server) == {X}
    conn = bind(server, WRITER_DN, WRITER_PASSWORD)
    for change in (
        {"mail": [(ldap3.MODIFY_ADD, ["evil@elsewhere.test"])]},
        {"mailLocalAddress": [(ldap3.MODIFY_ADD, ["evil@elsewhere.test"])]},
        {"cn": [(ldap3.MODIFY_REPLACE, ["Evil"])]},
        {"userPassword": [(ldap3.MODIFY_REPLACE, ["x"])]},
        {"objectClass": [(ldap3.MODIFY_ADD, ["posixAccount"])]},
        {"objectClass": [(ldap3.MODIFY_DELETE, ["inetOrgPerson"])]},
    ):
        _, result, _, _ = conn.modify(ALICE_DN, change)
        assert result["result"] == 50, (change, result)
    _, result, _, _ = conn.delete(ALICE_DN)
    assert result["result"] == 50
    _, _, resp, _ = conn.search(
        ALICE_DN, "(objectClass=*)", ldap3.BASE, attributes=["userPassword", "mail"]
    )
    assert not resp[0]["attributes"].get("userPassword") and not resp[0]["attributes"].get("mail")
    conn.unbind()
    assert w.delete("alice", X) is True
    assert w.delete("alice", X) is False  # no such value: already so
    assert values(server) == set()
    with pytest.raises(WriterError, match="matches 0 entries"):
        w.add("nobody", X)


def test_the_read_only_lookups_see_what_the_writer_wrote(server: Slapd, tmp_path: Path) -> None:
    cfg, wc = configs(server, tmp_path)
    d = LdapDirectory(cfg, RULES)
    try:
        assert X not in d.addresses_of("alice")
        LdapWriter(cfg, wc, RULES).add("alice", X)
        assert X in d.addresses_of("alice")
        # not in owner_filter (conf/ldap/policyd-ldap.toml): a verified address is foreign,
        # never "one of our senders" for protect_local_senders
        assert d.owners_of(X) == set()
    finally:
        d.close()


def _ldap_api(
    server: Slapd, tmp: Path, writer_password: str = WRITER_PASSWORD, writer: Any = None
) -> Any:
    cfg, wc = configs(server, tmp, writer_password)
    d = LdapDirectory(cfg, RULES)
    api, outbox, clock = make_api(tmp, writer=writer or LdapWriter(cfg, wc, RULES), directory=d)
    return api, outbox, d


def test_confirm_writes_the_entry_and_revoke_removes_it(server: Slapd, tmp_path: Path) -> None:
    api, outbox, d = _ldap_api(server, tmp_path)
    try:
        api.request("alice", X, actor=ALICE)
        assert values(server) == set()  # pending never counts
        api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
        assert values(server) == {X}
        assert api.entries()[0].state == "verified"
        api.revoke("alice", X, actor=ALICE)
        assert values(server) == set()
    finally:
        d.close()


@pytest.mark.parametrize("fault", ["wrong writer password", "slapd stopped"])
def test_a_failing_writer_leaves_the_request_pending_with_the_error(
    server: Slapd, tmp_path: Path, fault: str
) -> None:
    api, outbox, d = _ldap_api(server, tmp_path)
    try:
        api.request("alice", X, actor=ALICE)
        code = code_of(outbox.last)
        good = api
        if fault == "slapd stopped":
            server.stop()
        else:
            cfg, wc = configs(server, tmp_path / "..", "wrong-password")
            # (the same store and directory, another writer)
            api, _, _ = make_api(
                tmp_path, writer=LdapWriter(cfg, wc, RULES), directory=d, mailer=outbox
            )
        with pytest.raises(Refused) as e:
            api.confirm_code("alice", X, code, actor=ALICE)
        assert e.value.detail and "wrong-password" not in e.value.detail
        (entry,) = api.entries()
        assert entry.state == "pending"
        if fault == "slapd stopped":  # (the confirm's directory check comes before the write)
            assert e.value.code == "directory_unavailable"
        else:
            assert e.value.code == "store_unavailable"
            assert "directory write failed" in (entry.last_error or "")
        if fault == "slapd stopped":
            server.start()
        assert values(server) == set()
        api = good
        assert api.confirm_code("alice", X, code, actor=ALICE).state == "verified"
        assert values(server) == {X}
    finally:
        d.close()


class _StoreFailsAfterWriting(LdapWriter):
    """The real write; then the database refuses the next UPDATE (the verify step's), as a
    failing disk would: the transaction rolls back after the directory was written."""

    store: Any = None
    server: Any = None

    def add(self, login: str, address: str, identity: str | None = None) -> bool:
        added = super().add(login, address, identity)
        assert X in values(self.server)  # it really is in the directory at this point

        def deny_updates(action: int, *args: Any) -> int:
            return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_UPDATE else sqlite3.SQLITE_OK

        self.store.conn.set_authorizer(deny_updates)
        return added


def test_a_failed_commit_after_the_directory_write_is_undone(server: Slapd, tmp_path: Path) -> None:
    cfg, wc = configs(server, tmp_path)
    writer = _StoreFailsAfterWriting(cfg, wc, RULES)
    writer.server = server
    api, outbox, d = _ldap_api(server, tmp_path, writer=writer)
    writer.store = api.store
    try:
        api.request("alice", X, actor=ALICE)
        with pytest.raises(Refused) as e:
            api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
        assert e.value.code == "store_unavailable"
        assert values(server) == set()  # nothing half-written
        api.store.conn.set_authorizer(None)
        assert api.entries()[0].state == "pending"
    finally:
        d.close()


def test_a_revocation_beats_this_instances_ldap_cache(server: Slapd, tmp_path: Path) -> None:
    api, outbox, d = _ldap_api(server, tmp_path)
    api.request("alice", X, actor=ALICE)
    api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
    cache = CachedLookups(LookupRunner(d, 2, 3.0), CacheConfig(positive_ttl=300.0))
    source = VerifiedSource(tmp_path / "senders.sqlite", revoke_window=3600.0)
    lookups = SourcedLookups(cache, [source], 3.0)

    async def go() -> None:
        assert X in await lookups.addresses_of("alice")
        api.revoke("alice", X, actor=ALICE)
        assert values(server) == set()
        assert X in (cache.peek_addresses("alice") or set())  # still cached for 300 s ...
        assert X not in await lookups.addresses_of("alice")  # ... but no longer counted
        assert await lookups.owners_of(X) == set()

    try:
        asyncio.run(go())
    finally:
        lookups.close()


class _AnswerLost:
    """A real connection whose first modify is applied by slapd but whose answer is lost."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def modify(self, *args: Any, **kwargs: Any) -> Any:
        self._conn.modify(*args, **kwargs)
        raise TimeoutError("timed out (the answer never came)")


class _LosesTheFirstAnswer(LdapWriter):
    lost = False

    def _connect(self, first: int = 0) -> Any:
        conn, index = super()._connect(first)
        if not self.lost:
            self.lost = True
            return _AnswerLost(conn), index
        return conn, index


def test_an_add_whose_answer_is_lost_is_taken_out_again(server: Slapd, tmp_path: Path) -> None:
    cfg, wc = configs(server, tmp_path)
    writer = _LosesTheFirstAnswer(cfg, wc, RULES)
    api, outbox, d = _ldap_api(server, tmp_path, writer=writer)
    try:
        api.request("alice", X, actor=ALICE)
        code = code_of(outbox.last)
        with pytest.raises(Refused) as e:
            api.confirm_code("alice", X, code, actor=ALICE)
        assert e.value.code == "store_unavailable" and "timed out" in e.value.detail
        assert values(server) == set()  # applied, then undone: the request is only pending
        assert api.entries()[0].state == "pending"
        assert api.confirm_code("alice", X, code, actor=ALICE).state == "verified"
        assert values(server) == {X}
    finally:
        d.close()


def test_an_address_already_in_the_entry_is_not_written_again(
    server: Slapd, tmp_path: Path
) -> None:
    cfg, wc = configs(server, tmp_path)
    admin = bind(server, server.admin_dn, server.admin_password)
    admin.modify(
        ALICE_DN,
        {"objectClass": [(ldap3.MODIFY_ADD, ["policydSender"])], ATTR: [(ldap3.MODIFY_ADD, [X])]},
    )
    admin.unbind()
    writer = _LosesTheFirstAnswer(cfg, wc, RULES)
    assert writer.add("alice", X) is False  # read first: already so, nothing sent
    assert values(server) == {X}
