"""The LDAP directory backend (ldap3, synchronous, a connection per thread), with failover.

What a login owns: the attributes `user_attributes` (default mail, mailLocalAddress) of the one
entry `user_filter` finds under `user_base`, plus `group_attributes` of every group
`group_filter` finds for that entry's DN under `group_base` (values read by entries.py).

Decisions worth knowing:

* Matching is the directory's (uid's caseIgnoreMatch: the fullwidth login "ａｌｉｃｅ" finds
  uid=alice); logins arrive authenticated by SASL, so only look-alike SASL accounts matter.
* A login that matches more than one entry is ambiguous: logged as a warning and treated as
  unknown (empty). The user search uses size_limit=2 to detect that cheaply.
* owners_of(key) answers for exactly one key (an address, its extension-stripped form or
  "@domain"; the caller applies Postfix's most-specific-key rule): `owner_filter` with
  {address} = the key, keeping only entries that hold the key among `user_attributes`, then
  the groups holding the key (groups.py). All logins go through canonical_login.
* Searches that may return many entries (the reverse group lookup) are paged (RFC 2696), so a
  server's page size (Active Directory: 1000) does not cut them short. Referrals are never
  followed (a continuation reference is skipped; a referral answer is an error).
* Servers are tried in the configured order by our own loop (not ldap3's ServerPool: its
  state is per Connection and `active=True` retries forever). A server that failed is tried
  last for _DOWN_FOR seconds, and connections other threads hold to it are replaced at their
  next use. A connection to a lower-priority server tries the preferred one again every
  _FAILBACK_AFTER seconds (keeping the working connection if that fails).
* Timeouts (what each bounds: connection.py): a call retries once, on a fresh connection,
  only when a reused connection failed at once (server restarted, idle connection closed);
  never after a timeout. A new server is not tried once max(connect_timeout, receive_timeout)
  has passed in the call, so a call blocks for about one timeout, not one per server.
* Every failure (network, TLS, bind, missing search base, timeout, server-side error) raises
  DirectoryUnavailable with a reason naming the server; the thread's connection is dropped and
  the next call reconnects, so a restarted slapd is used again without restarting policyd.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import ldap3

from policyd.addresses import AddressRules, normalize_address, split_address
from policyd.config import LdapConfig
from policyd.directory.base import DirectoryError, DirectoryUnavailable
from policyd.directory.ldap import entries as ent
from policyd.directory.ldap.connection import (
    NO_SUCH_OBJECT,
    SERVER_TROUBLE,
    SIZE_LIMIT_EXCEEDED,
    SUCCESS,
    StepFailed,
    close_quietly,
    describe_error,
    is_timeout,
    make_tls,
    open_connection,
    page_cookie,
    parse_server_url,
    read_bind_password,
    result_text,
    warn_insecure_transport,
)
from policyd.directory.ldap.entries import Found
from policyd.directory.ldap.filters import (
    check_filter,
    default_group_base,
    render_filter,
    reverse_groups,
)
from policyd.directory.ldap.groups import GroupOwners

log = logging.getLogger(__name__)

#: A server that failed is tried after the others for this long (seconds).
_DOWN_FOR: Final = 30.0
#: A connection to a lower-priority server tries the preferred one again after this (seconds).
_FAILBACK_AFTER: Final = 60.0
#: Page size of paged searches (at most Active Directory's default MaxPageSize).
_PAGE: Final = 500
_SCOPES: Final = {"base": ldap3.BASE, "one": ldap3.LEVEL, "sub": ldap3.SUBTREE}


@dataclass
class _Conn:
    conn: Any
    index: int  # position in the server list
    epoch: int  # that server's epoch when opened
    opened: float
    next_failback: float


class LdapDirectory:
    """Directory backend over LDAP. Thread-safe; each calling thread gets its own connection.
    Connecting is lazy (the first lookup); construction only validates and reads the password
    (read_password=False: at the first connection). Raises DirectoryError on a bad setup."""

    blocking = True

    def __init__(self, cfg: LdapConfig, rules: AddressRules, *, read_password: bool = True) -> None:
        self.cfg = cfg
        self.rules = rules
        why = cfg.servers_problem()
        if why is not None:
            raise DirectoryError(f"ldap.servers: {why}")
        self._specs = [parse_server_url(u, cfg.start_tls) for u in cfg.servers]
        self._tls = make_tls(cfg)
        self._password = read_bind_password(cfg) if read_password else None
        self._password_read = read_password
        for key, tmpl, names in cfg.filter_templates():
            check_filter(key, tmpl, names)
        self._scope_user = _SCOPES[cfg.user_scope]
        self._scope_group = _SCOPES[cfg.group_scope]
        self.group_base = cfg.group_base or default_group_base(cfg.user_base)
        self._user_attrs = list(cfg.user_attributes)
        self._group_attrs = list(cfg.group_attributes)
        self._reverse = reverse_groups(cfg.group_filter) if self._group_attrs else None
        if self._group_attrs and self._reverse is None and not cfg.group_address_filter:
            log.warning(
                "ldap.group_filter %r has no single (ATTR={dn}) or (ATTR={login}) term: "
                "owners_of will not report owners through groups",
                cfg.group_filter,
            )
        self._groups = GroupOwners(
            cfg, rules, self._group_attrs, self._reverse,
            search_groups=lambda filt, attrs: self._search(
                self.group_base, self._scope_group, filt, attrs, 0, paged=True),
            search_users=self.search_users,
            read_entry=lambda dn, attrs: self._search(
                dn, ldap3.BASE, "(objectClass=*)", attrs, 0, missing_ok=True),
        )  # fmt: skip
        warn_insecure_transport(cfg, self._specs)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._registry: dict[int, _Conn] = {}
        self._down_until = [0.0] * len(self._specs)
        self._epoch = [0] * len(self._specs)
        self._closed = False
        self._budget = float(max(cfg.connect_timeout, cfg.receive_timeout))

    # -- Directory protocol ------------------------------------------------------------

    def _user_entry(self, login: str, attrs: list[str]) -> dict[str, Any] | None:
        """The one entry `user_filter` finds for the login (None: unknown or ambiguous)."""
        if not login:
            return None
        localpart, domain = split_address(login)
        filt = render_filter(self.cfg.user_filter, login=login, localpart=localpart, domain=domain)
        found = self._search(self.cfg.user_base, self._scope_user, filt, attrs, 2)
        entries = found.entries
        if len(entries) > 1 or found.truncated:
            dns = ", ".join(e["dn"] for e in entries)
            msg = "LDAP: login %r matches more than one entry under %s (%s): treated as unknown"
            log.warning(msg, login, self.cfg.user_base, dns)
            return None
        return entries[0] if entries else None

    def addresses_of(self, login: str) -> frozenset[str]:
        if (entry := self._user_entry(login, self._user_attrs)) is None:
            return frozenset()
        out = set(self._addresses(entry, self._user_attrs))
        if self._group_attrs:
            gfilt = render_filter(self.cfg.group_filter, dn=entry["dn"], login=login)
            groups = self._search(self.group_base, self._scope_group, gfilt, self._group_attrs, 0)
            if groups.truncated:
                log.warning(
                    "LDAP: group search for %s hit a size limit; results incomplete", entry["dn"]
                )
            for g in groups.entries:
                out.update(self._addresses(g, self._group_attrs))
        return frozenset(out)

    def identity_of(self, login: str) -> frozenset[str]:
        """{"entryUUID=<uuid>", maybe "pwdChangedTime=<t>"}: see entries.entry_identity."""
        e = self._user_entry(login, ["entryUUID", "pwdChangedTime"])
        return frozenset() if e is None else ent.entry_identity(e)

    def values_of(self, attr: str, login: str) -> frozenset[str]:
        """The values of `attr` in the login's entry (empty: none, or the login unknown)."""
        e = self._user_entry(login, [attr])
        return frozenset() if e is None else frozenset(ent.entry_values(e, [attr]))

    def owners_of(self, address: str) -> frozenset[str]:
        key = normalize_address(address, self.rules)
        local, domain = split_address(key)
        if not domain:
            return frozenset()  # (not an address)
        filt = render_filter(self.cfg.owner_filter, address=key, localpart=local, domain=domain)
        login_attr = self.cfg.owner_login_attribute
        owners: set[str] = set()
        attrs = [login_attr, *self.cfg.user_attributes]
        found = self._search(self.cfg.user_base, self._scope_user, filt, attrs, 0)
        for e in found.entries:
            held = self._addresses(e, self.cfg.user_attributes)
            # Only entries that hold exactly this key own it (an owner_filter may also match
            # the "@domain" of an address); an entry whose addresses cannot be read at all is
            # kept: a false owner refuses a sender, a missed one could let a spoofer through.
            if key in held or not held:
                owners.update(ent.entry_logins(e, login_attr, self.rules))
        if self._reverse is not None or self.cfg.group_address_filter:
            owners.update(self._groups.owners_of(key))
        return frozenset(owners)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._registry.values())
            self._registry.clear()
        for c in conns:
            close_quietly(c.conn)

    # -- results -----------------------------------------------------------------------

    def search_users(self, filt: str, attrs: list[str]) -> Found:
        """Every entry under user_base that `filt` finds (all pages, no size limit). Raises
        DirectoryUnavailable."""
        return self._search(self.cfg.user_base, self._scope_user, filt, attrs, 0, paged=True)

    def _addresses(self, entry: Mapping[str, Any], attrs: Sequence[str]) -> list[str]:
        return ent.entry_addresses(entry, attrs, self.rules)

    # -- connections -------------------------------------------------------------------

    def _mark_down(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = time.monotonic() + _DOWN_FOR
            self._epoch[index] += 1

    def _drop(self, c: _Conn) -> None:
        if getattr(self._local, "conn", None) is c:
            self._local.conn = None
        with self._lock:
            self._registry.pop(id(c), None)
        close_quietly(c.conn)

    def _register(self, c: _Conn) -> None:
        with self._lock:
            if self._closed:
                close_quietly(c.conn)
                raise DirectoryUnavailable("the LDAP directory was closed")
            self._registry[id(c)] = c
        self._local.conn = c

    def _order(self, now: float) -> list[int]:
        with self._lock:
            down = list(self._down_until)
        return sorted(range(len(self._specs)), key=lambda i: (down[i] > now, i))

    def _connect(self, only_better_than: int | None = None) -> _Conn:
        """A new connection, servers in order (recently failed ones last). With
        only_better_than, only servers before that index are tried (failback)."""
        start = time.monotonic()
        order = self._order(start)
        if only_better_than is not None:
            order = [i for i in order if i < only_better_than]
        errors: list[str] = []
        for k, i in enumerate(order):
            if k > 0 and time.monotonic() - start >= self._budget:
                errors.append("(no time left for the other servers)")
                break
            spec = self._specs[i]
            with self._lock:
                epoch = self._epoch[i]
            try:
                if not self._password_read:
                    self._password, self._password_read = read_bind_password(self.cfg), True
                conn = open_connection(spec, self.cfg, self._tls, self._password)
            except StepFailed as e:
                errors.append(f"{spec.url}: {e.reason}")
                self._mark_down(i)
                continue
            now = time.monotonic()
            c = _Conn(conn, i, epoch, now, now + _FAILBACK_AFTER)
            self._register(c)
            if i != 0 or errors:
                log.info(
                    "LDAP: connected to %s%s",
                    spec.url,
                    f" after: {'; '.join(errors)}" if errors else "",
                )
            return c
        raise DirectoryUnavailable("no LDAP server answered: " + "; ".join(errors))

    def _acquire(self) -> tuple[_Conn, bool]:
        """(connection, fresh) for the calling thread."""
        if self._closed:
            raise DirectoryUnavailable("the LDAP directory was closed")
        c: _Conn | None = getattr(self._local, "conn", None)
        if c is not None:
            with self._lock:
                stale = self._epoch[c.index] != c.epoch
            if stale:  # another thread saw this server fail
                self._drop(c)
                c = None
        if c is not None and c.index > 0:
            now = time.monotonic()
            if now >= c.next_failback:
                c.next_failback = now + _FAILBACK_AFTER
                if any(self._down_until[i] <= now for i in range(c.index)):
                    try:
                        better = self._connect(only_better_than=c.index)
                    except DirectoryUnavailable:
                        self._local.conn = c  # keep the working one
                    else:
                        with self._lock:
                            self._registry.pop(id(c), None)
                        close_quietly(c.conn)
                        log.info(
                            "LDAP: back from %s to %s",
                            self._specs[c.index].url,
                            self._specs[better.index].url,
                        )
                        return better, True
        if c is not None:
            return c, False
        return self._connect(), True

    def _search(
        self,
        base: str,
        scope: Any,
        filt: str,
        attrs: list[str],
        size_limit: int,
        missing_ok: bool = False,
        paged: bool = False,
    ) -> Found:
        for attempt in (0, 1):
            c, fresh = self._acquire()
            url = self._specs[c.index].url
            entries: list[dict[str, Any]] = []
            cookie: Any = None
            try:
                while True:
                    _ok, result, response, _ = c.conn.search(
                        base,
                        filt,
                        search_scope=scope,
                        attributes=attrs,
                        size_limit=size_limit,
                        time_limit=int(self.cfg.receive_timeout),
                        paged_size=_PAGE if paged else None,
                        paged_cookie=cookie,
                    )
                    entries += [r for r in (response or []) if r.get("type") == "searchResEntry"]
                    cookie = page_cookie(result) if paged else None
                    if not cookie or int(result.get("result", -1)) != SUCCESS:
                        break
            except Exception as e:  # noqa: BLE001 - LDAPException, or OSError/ssl/pyasn1 errors ldap3 lets through; callers must only ever see DirectoryUnavailable
                self._drop(c)
                timed_out = is_timeout(e)
                if attempt == 0 and not fresh and not timed_out:
                    # A kept connection failed at once: the server restarted or closed it
                    # (idletimeout). Not a reason to avoid the server: reconnect in order, and
                    # the connect marks it down if it is really gone.
                    log.info("LDAP: %s: %s; reconnecting", url, describe_error(e, self.cfg))
                    continue
                self._mark_down(c.index)
                raise DirectoryUnavailable(
                    f"{url}: search failed: {describe_error(e, self.cfg)}"
                ) from None
            code = int(result.get("result", -1)) if result else -1
            if code in (SUCCESS, SIZE_LIMIT_EXCEEDED):
                return Found(entries, code == SIZE_LIMIT_EXCEEDED)
            if code == NO_SUCH_OBJECT:
                if missing_ok:
                    return Found([], False)
                raise DirectoryUnavailable(
                    f"{url}: search base {base!r} does not exist (or the bind DN may not read it)"
                )
            if code in SERVER_TROUBLE or code < 0:
                self._drop(c)
                self._mark_down(c.index)
            raise DirectoryUnavailable(f"{url}: search failed: {result_text(result)}")
        raise AssertionError("unreachable")  # pragma: no cover
