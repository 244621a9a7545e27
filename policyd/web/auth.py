"""Logging in to the web page (blocking: call from a thread).

LDAP: the user's entry is found with `ldap.user_filter` (every value escaped) by the service
account's bind (or anonymously), over the configured servers and TLS settings; then a second
connection makes a simple bind as that entry's DN with the password typed. The password goes
nowhere else: it is never logged, stored or put in an exception. An empty password is refused
before anything is sent (an LDAP bind with a DN and no password is an "unauthenticated bind"
that many servers answer with success).

The login is the directory's: after the entry is found, its `ldap.owner_login_attribute` is
read and becomes the session's login and the throttle's key (OpenLDAP's caseIgnoreMatch finds
bob's entry for a fullwidth "ＢＯＢ"; that must not open a fresh throttle bucket or a session
under a new string). A typed login that NFKC and case folding would change is refused unless
it already is the entry's login. `gate(login)` is called with that login before the password is
sent (the throttle counts the attempt there); it returns False to stop the bind.

An unknown login binds as `web.login_decoy_dn` (an entry whose password nobody knows, hashed like
the users'), so the directory computes a password hash as it does for a known login and the time
taken does not tell the two apart. Without a decoy DN the decoy bind (to a DN that does not
exist) costs the directory no hash, so the answer is held instead: for a duration drawn from the
last real binds' durations (`BindTimes`), so an unknown login's answer takes what a known
login's takes, with the same spread.

Proxy: a reverse proxy that authenticated the user passes the login in a header; it is believed
only when the connection comes from one of `web.trusted_proxies`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException

from policyd.addresses import AddressRules, canonical_login, split_address
from policyd.config import LdapConfig
from policyd.directory.base import DirectoryUnavailable
from policyd.directory.ldap import parse_server_url, read_bind_password, render_filter
from policyd.directory.ldap.connection import make_tls

log = logging.getLogger(__name__)

_SCOPES = {"base": ldap3.BASE, "one": ldap3.LEVEL, "sub": ldap3.SUBTREE}
_INVALID_CREDENTIALS = 49


class LoginUnavailable(Exception):
    """The login could not be checked (directory down): not the user's fault."""


class Throttled(Exception):
    """The gate refused the attempt: no password was sent."""


def folded(login: str) -> str:
    """NFKC + case folding: the form under which a directory's caseIgnoreMatch may find one
    entry for several typed strings."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", login).casefold())


class BindTimes:
    """The durations of the last real binds (a known login's password checked by the
    directory); `hold()` draws one of them, so the held answers have the real binds' spread.
    Thread-safe (logins run in a thread pool)."""

    #: how many recent binds are remembered
    SIZE = 64
    #: before any real bind was seen: a typical cost of a salted hash check (seconds)
    FIRST = 0.05

    def __init__(self) -> None:
        self._times: deque[float] = deque(maxlen=self.SIZE)
        self._lock = threading.Lock()
        self._random = random.SystemRandom()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._times.append(seconds)

    def hold(self) -> float:
        with self._lock:
            if not self._times:
                return self.FIRST * self._random.uniform(0.9, 1.1)
            return self._random.choice(self._times)


class LdapLogin:
    """Checks a login and password by binding as the user's own directory entry."""

    def __init__(self, cfg: LdapConfig, rules: AddressRules, decoy_dn: str = "") -> None:
        self.cfg = cfg
        self.rules = rules
        self.decoy_dn = decoy_dn
        #: without a decoy DN: how long real binds took, to hold an unknown login's answer
        self.bind_times = BindTimes()
        self._specs = [parse_server_url(u, cfg.start_tls) for u in cfg.servers]
        self._tls_obj = make_tls(cfg)
        self._service_password = read_bind_password(cfg)

    def _connection(self, spec: Any, user: str | None, password: str | None) -> Any:
        conn = ldap3.Connection(
            spec.server(self.cfg, self._tls_obj),
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            client_strategy=ldap3.SAFE_SYNC,
            auto_bind=ldap3.AUTO_BIND_NONE,
            receive_timeout=int(self.cfg.receive_timeout),
            raise_exceptions=False,
            read_only=True,
            auto_referrals=False,
            check_names=False,
        )
        conn.open(read_server_info=False)
        if spec.start_tls and not conn.start_tls(read_server_info=False)[0]:
            raise LDAPException("StartTLS refused")
        return conn

    def _find_dn(self, spec: Any, login: str) -> tuple[str, list[str]] | None:
        local, domain = split_address(login)
        filt = render_filter(self.cfg.user_filter, login=login, localpart=local, domain=domain)
        conn = self._connection(spec, self.cfg.bind_dn or None, self._service_password)
        try:
            ok, result, _, _ = conn.bind(read_server_info=False)
            if not ok:
                raise LDAPException(f"service bind failed: {result.get('description')}")
            ok, result, response, _ = conn.search(
                self.cfg.user_base,
                filt,
                search_scope=_SCOPES[self.cfg.user_scope],
                attributes=[self.cfg.owner_login_attribute],
                size_limit=2,
                time_limit=int(self.cfg.receive_timeout),
            )
            code = int(result.get("result", -1)) if result else -1
            if code not in (0, 4, 32):
                raise LDAPException(f"search failed: {result.get('description')}")
            entries = [r for r in (response or []) if r.get("type") == "searchResEntry"]
            if len(entries) != 1 or code == 4:
                return None  # unknown, or ambiguous: never guess which entry
            values = (entries[0].get("attributes") or {}).get(self.cfg.owner_login_attribute)
            if isinstance(values, (str, bytes)):
                values = [values]
            logins = [
                v if isinstance(v, str) else v.decode("utf-8", "replace") for v in values or []
            ]
            return str(entries[0]["dn"]), logins
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

    def _bind_as(self, spec: Any, dn: str, password: str) -> bool:
        conn = self._connection(spec, dn, password)
        try:
            ok, result, _, _ = conn.bind(read_server_info=False)
            if ok:
                return True
            if int(result.get("result", -1)) == _INVALID_CREDENTIALS:
                return False
            raise LDAPException(f"bind failed: {result.get('description')}")
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

    def _entry_login(self, typed: str, values: list[str]) -> str | None:
        """The entry's own login (canonical form): the typed one when the entry holds it,
        else the entry's only one; None when that is ambiguous or the typed string is one
        that folding changes into another login."""
        logins = {canonical_login(v, self.rules) for v in values if v.strip()}
        if typed in logins:
            return typed
        if typed != folded(typed) or len(logins) != 1:
            return None
        return next(iter(logins))

    def _decoy(self, spec: Any, password: str) -> None:
        """The same work as for a wrong password: a bind that the directory checks against a
        stored hash (web.login_decoy_dn), so the timing does not tell unknown logins from
        known ones."""
        dn = self.decoy_dn or f"cn=policyd-web-no-such-user,{self.cfg.user_base}"
        start = time.monotonic()
        with contextlib.suppress(LDAPException, OSError):
            self._bind_as(spec, dn, password)
        if not self.decoy_dn:
            # no hash was computed: hold the answer as long as a real bind takes
            rest = self.bind_times.hold() - (time.monotonic() - start)
            if rest > 0:
                time.sleep(min(rest, self.cfg.receive_timeout))

    def authenticate(
        self, login: str, password: str, gate: Callable[[str], bool] | None = None
    ) -> str | None:
        """The entry's login when the password is right; None when the login is unknown
        or the password wrong (the caller shows the same answer for both). Raises
        LoginUnavailable when no server could answer, Throttled when `gate` said no."""
        if not login or not password:
            return None
        canonical = canonical_login(login, self.rules)
        errors: list[str] = []
        for spec in self._specs:
            try:
                found = self._find_dn(spec, canonical)
                entry_login = None if found is None else self._entry_login(canonical, found[1])
                if found is None or entry_login is None:
                    self._decoy(spec, password)
                    return None
                if gate is not None and not gate(entry_login):
                    raise Throttled
                start = time.monotonic()
                ok = self._bind_as(spec, found[0], password)
                self.bind_times.add(time.monotonic() - start)
                return entry_login if ok else None
            except (LDAPException, OSError, DirectoryUnavailable) as e:
                # str(e) of ldap3 never holds the password; keep only the class and server.
                errors.append(f"{spec.url}: {type(e).__name__}")
                continue
        log.warning("web login: no LDAP server answered (%s)", "; ".join(errors))
        raise LoginUnavailable("no LDAP server answered")


def parse_networks(
    specs: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def address_in(
    address: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


def untrusted_loopback_proxy(
    remote: str | None,
    headers: Mapping[str, str],
    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> bool:
    """A loopback peer forwards a client (X-Forwarded-For) but no proxy is trusted: every
    client would look like that one address, and its failures would lock out everyone."""
    if proxies or "X-Forwarded-For" not in headers:
        return False
    try:
        peer = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer.is_loopback
