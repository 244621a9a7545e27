"""store = "ldap": verified addresses written to the user's entry by a separate writer bind.

The writer bind's ACL may write only the verification attribute (conf/ldap/acl-senders.conf);
the policy lookups keep their read-only bind and read the attribute as one of
ldap.user_attributes, so every instance reading the directory (and its replicas) sees it.
`MODIFY_ADD` on verify, `MODIFY_DELETE` on revoke; result 20 (value exists) on add and 16 (no
such value) on delete mean "already so". An entry without the auxiliary class gets it in the
same modify. One short connection per write (writes are rare). Blocking.

Servers are tried in ldap.servers order; a read-only replica (a syncrepl consumer) answers a
write with a referral (updateref), and then the next server is tried, so a host that reads
its nearest replica first still writes to the provider.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import Any

import ldap3

from policyd.addresses import AddressRules, split_address
from policyd.config import LdapConfig
from policyd.config.verification import VerificationLdapConfig
from policyd.credentials import CredentialError, read_password
from policyd.directory.ldap import render_filter
from policyd.directory.ldap.entries import entry_identity
from policyd.directory.ldap.tls import Tls
from policyd.verification.writes import WriterError

log = logging.getLogger(__name__)

_SUCCESS = 0
_NO_SUCH_ATTRIBUTE = 16
_VALUE_EXISTS = 20
_SIZE_LIMIT_EXCEEDED = 4
_OBJECT_CLASS_VIOLATION = 65
_REFERRAL = 10
_NO_SUCH_OBJECT = 32
#: (what _modify_on answers when the entry the identity names is gone)
_NO_ENTRY = -32


def writer_password(wc: VerificationLdapConfig) -> str:
    """From verification.ldap.writer_password_file, else the systemd credential (see
    policyd.credentials). Raises WriterError, never showing the password."""
    if wc.writer_password_file is None and not wc.writer_password_credential:
        raise WriterError("no writer password configured")
    keys = "verification.ldap.writer_password"
    try:
        return read_password(wc.writer_password_file, wc.writer_password_credential, keys)
    except CredentialError as e:
        raise WriterError(str(e)) from None


def _text(result: Any) -> str:
    if not result:
        return "no result"
    desc = result.get("description") or result.get("result")
    msg = str(result.get("message") or "").strip()
    return f"{desc} ({msg})" if msg else str(desc)


class _Referred(Exception):
    """A server answered the write with a referral (a replica): try the next one."""

    def __init__(self, index: int, url: str) -> None:
        self.index, self.url = index, url


class LdapWriter:
    def __init__(self, cfg: LdapConfig, wc: VerificationLdapConfig, rules: AddressRules) -> None:
        self.cfg, self.wc, self.rules = cfg, wc, rules

    def _tls(self) -> Any:
        validate = ssl.CERT_REQUIRED if self.cfg.tls_validate else ssl.CERT_NONE
        ca = str(self.cfg.ca_file) if self.cfg.ca_file is not None else None
        return Tls(validate=validate, ca_certs_file=ca)  # (IP-address servers on 3.12+)

    def _connect(self, first: int = 0) -> tuple[Any, int]:
        """A bound writer connection to the first server from index `first` that takes one,
        and that server's index."""
        password = writer_password(self.wc)
        errors = []
        for index, url in enumerate(self.cfg.servers[first:], first):
            tls = self._tls() if (url.startswith("ldaps:") or self.cfg.start_tls) else None
            server = ldap3.Server(
                url, get_info=ldap3.NONE, connect_timeout=self.cfg.connect_timeout, tls=tls
            )
            conn = ldap3.Connection(
                server,
                user=self.wc.writer_bind_dn,
                password=password,
                client_strategy=ldap3.SAFE_SYNC,
                receive_timeout=int(self.cfg.receive_timeout),
                raise_exceptions=False,
                auto_referrals=False,
            )
            try:
                conn.open(read_server_info=False)
                if self.cfg.start_tls and url.startswith("ldap:"):
                    if not conn.start_tls(read_server_info=False)[0]:
                        raise WriterError(f"StartTLS refused: {_text(conn.result)}")
                ok, result, _, _ = conn.bind(read_server_info=False)
                if not ok:
                    raise WriterError(f"writer bind refused: {_text(result)}")
                return conn, index
            except Exception as e:  # noqa: BLE001 - ldap3/OSError/ssl: all mean "cannot write"
                with contextlib.suppress(Exception):
                    conn.unbind()
                errors.append(f"{url}: {e}")
        raise WriterError("; ".join(errors) or "no LDAP server configured (or left to try)")

    def _dn(self, conn: Any, login: str, identity: str | None = None) -> str | None:
        """The DN of the login's entry; with `identity`, of the entry that identity names
        (None when it is gone: another entry may hold the login now)."""
        if identity is not None:
            return self._dn_of_identity(conn, identity)
        localpart, domain = split_address(login)
        filt = render_filter(self.cfg.user_filter, login=login, localpart=localpart, domain=domain)
        scope = {"base": ldap3.BASE, "one": ldap3.LEVEL, "sub": ldap3.SUBTREE}[self.cfg.user_scope]
        _, result, response, _ = conn.search(
            self.cfg.user_base, filt, search_scope=scope, attributes=[], size_limit=2
        )
        entries = [r for r in (response or []) if r.get("type") == "searchResEntry"]
        code = int(result.get("result", -1)) if result else -1
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            raise WriterError(f"search for {login!r} failed: {_text(result)}")
        if len(entries) != 1:
            raise WriterError(
                f"login {login!r} matches {len(entries)} entries under {self.cfg.user_base}"
            )
        return str(entries[0]["dn"])

    def _dn_of_identity(self, conn: Any, identity: str) -> str | None:
        kind, _, value = identity.partition("=")
        scope = {"base": ldap3.BASE, "one": ldap3.LEVEL, "sub": ldap3.SUBTREE}[self.cfg.user_scope]
        if kind == "dn":
            base, filt, scope = value, "(objectClass=*)", ldap3.BASE
        elif kind == "entryUUID":
            base, filt = self.cfg.user_base, render_filter("(entryUUID={u})", u=value)
        else:
            raise WriterError(f"unknown directory identity {identity!r}")
        _, result, response, _ = conn.search(
            base, filt, search_scope=scope, attributes=["entryUUID"], size_limit=2
        )
        code = int(result.get("result", -1)) if result else -1
        if code == _NO_SUCH_OBJECT:
            return None
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            raise WriterError(f"search for the entry {identity!r} failed: {_text(result)}")
        entries = [r for r in (response or []) if r.get("type") == "searchResEntry"]
        if len(entries) > 1:
            raise WriterError(f"the identity {identity!r} matches {len(entries)} entries")
        if not entries:
            return None
        if kind == "entryUUID" and identity not in entry_identity(entries[0]):
            return None
        # (a "dn=" identity, recorded where entryUUID could not be read, cannot tell a new
        # entry under the same DN from the old one)
        return str(entries[0]["dn"])

    def _has(self, conn: Any, dn: str, address: str) -> bool:
        filt = render_filter(f"({self.wc.attribute}={{a}})", a=address)
        _, result, response, _ = conn.search(dn, filt, search_scope=ldap3.BASE, attributes=[])
        code = int(result.get("result", -1)) if result else -1
        if code != _SUCCESS:
            raise WriterError(f"reading {self.wc.attribute} of {dn} failed: {_text(result)}")
        return any(r.get("type") == "searchResEntry" for r in response or [])

    def _modify(self, login: str, address: str, op: Any, identity: str | None) -> int:
        first, referred = 0, []
        while True:
            try:
                return self._modify_on(first, login, address, op, identity)
            except _Referred as r:
                referred.append(r.url)
                first = r.index + 1
                if first >= len(self.cfg.servers):
                    raise WriterError(
                        f"every server refers writes elsewhere ({', '.join(referred)}): list "
                        "the provider in ldap.servers"
                    ) from None

    def _modify_on(
        self, first: int, login: str, address: str, op: Any, identity: str | None
    ) -> int:
        conn, index = self._connect(first)
        sent = False
        dn: str | None = ""
        try:
            dn = self._dn(conn, login, identity)
            if dn is None:
                return _NO_ENTRY
            attr = self.wc.attribute
            if op == ldap3.MODIFY_ADD and self._has(conn, dn, address):
                return _VALUE_EXISTS  # (so a lost answer below can only be about our value)
            sent = True
            _, result, _, _ = conn.modify(dn, {attr: [(op, [address])]})
            code = int(result.get("result", -1)) if result else -1
            if code == _OBJECT_CLASS_VIOLATION and op == ldap3.MODIFY_ADD:
                # the entry lacks the auxiliary class: add it with the value, in one modify
                _, result, _, _ = conn.modify(
                    dn,
                    {
                        "objectClass": [(ldap3.MODIFY_ADD, [self.wc.object_class])],
                        attr: [(ldap3.MODIFY_ADD, [address])],
                    },
                )
                code = int(result.get("result", -1)) if result else -1
            if code == _REFERRAL:  # a read-only replica: nothing was written here
                raise _Referred(index, self.cfg.servers[index])
            if code not in (_SUCCESS, _VALUE_EXISTS, _NO_SUCH_ATTRIBUTE):
                raise WriterError(f"modify {attr} of {dn} failed: {_text(result)}")
            return code
        except (WriterError, _Referred):
            raise
        except Exception as e:  # noqa: BLE001 - ldap3/OSError/ssl: all mean "cannot write"
            if sent and op == ldap3.MODIFY_ADD and dn:
                self._undo_unanswered_add(index, dn, address)
            raise WriterError(f"LDAP write failed: {e}") from None
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

    def _undo_unanswered_add(self, index: int, dn: str, address: str) -> None:
        """An add whose answer was lost may have been applied: take the value out again (it
        was not there before), so a request left pending never counts in the directory."""
        try:
            conn, _ = self._connect(index)  # (where the write went)
        except WriterError as e:
            log.error("LDAP: could not undo an unanswered add of %s to %s: %s", address, dn, e)
            return
        try:
            conn.modify(dn, {self.wc.attribute: [(ldap3.MODIFY_DELETE, [address])]})
        except Exception as e:  # noqa: BLE001 - best effort, reported
            log.error("LDAP: could not undo an unanswered add of %s to %s: %s", address, dn, e)
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

    def add(self, login: str, address: str, identity: str | None = None) -> bool:
        """True when the value was added; False when it was there already. WriterError when
        the entry `identity` names is gone."""
        code = self._modify(login, address, ldap3.MODIFY_ADD, identity)
        if code == _NO_ENTRY:
            raise WriterError(f"the directory entry of {login!r} that asked is gone")
        if code == _NO_SUCH_ATTRIBUTE:
            raise WriterError("modify add answered noSuchAttribute")
        return code == _SUCCESS

    def delete(self, login: str, address: str, identity: str | None = None) -> bool:
        """True when the value was removed; False when it was not there (or the entry that
        `identity` names is gone: nothing of it is left to remove)."""
        code = self._modify(login, address, ldap3.MODIFY_DELETE, identity)
        if code == _VALUE_EXISTS:
            raise WriterError("modify delete answered attributeOrValueExists")
        return code == _SUCCESS
