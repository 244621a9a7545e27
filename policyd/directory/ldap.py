"""The LDAP directory backend (ldap3, synchronous, one connection per lookup thread).

What a login owns: the attributes `user_attributes` (default mail, mailLocalAddress) of the one
entry `user_filter` finds under `user_base`, plus `group_attributes` of every group
`group_filter` finds for that entry's DN under `group_base`. Values are normalised with
normalize_address; "@domain" values mean the whole domain.

Decisions worth knowing:

* Filters are the config templates with {login}, {localpart}, {domain}, {address}, {dn}
  filled in. Every value is escaped (ldap3 escape_filter_chars; a value that is not valid
  UTF-8, e.g. surrogateescape'd bytes, is sent as \\XX escapes of its bytes). A template is
  never formatted with an unescaped value, so no input can change a filter's structure.
* Matching is the directory's: with uid's caseIgnoreMatch slapd ignores insignificant spaces
  and folds compatibility forms (the login "ａｌｉｃｅ", fullwidth, finds uid=alice). Logins
  arrive from SASL, already authenticated, so this only matters if the SASL backend holds
  such look-alike accounts separately from LDAP.
* A login that matches more than one entry is ambiguous: logged as a warning and treated as
  unknown (empty). The user search uses size_limit=2 to detect that cheaply.
* `group_base` empty means the domain-component suffix of `user_base` ("ou=people,dc=example,
  dc=org" -> "dc=example,dc=org"); when user_base has no dc= part, its last RDN ("o=corp").
* owners_of(key) answers for exactly one key (an address, its extension-stripped form or
  "@domain"; the caller applies Postfix's most-specific-key rule): `owner_filter` with
  {address} = the key, keeping only entries that hold the key among `user_attributes`, then
  the groups holding the key: the group filter is `group_filter` with its membership assertion
  ("(member={dn})" or "(memberUid={login})") replaced by the address test on
  `group_attributes`. Members are reported by `owner_login_attribute`: read from the member DN
  when its first RDN is that attribute (uid=alice,...), otherwise read from the member's entry
  (at most _MAX_MEMBER_READS reads per call). All logins go through canonical_login.
* Servers are tried in the configured order by our own loop (not ldap3's ServerPool: its
  state is per Connection and `active=True` retries forever). A server that failed is tried
  last for _DOWN_FOR seconds, and connections other threads hold to it are replaced at their
  next use. A connection to a lower-priority server tries the preferred one again every
  _FAILBACK_AFTER seconds (keeping the working connection if that fails).
* Timeouts: `connect_timeout` bounds the TCP connect; `receive_timeout` every later read (TLS
  handshake, bind, search). A call retries once, on a fresh connection, only when a reused
  connection failed at once (server restarted, idle connection closed); never after a timeout.
  A new server is not tried once max(connect_timeout, receive_timeout) has passed in the call,
  so a call blocks for about one timeout, not one per server.
* Every failure (network, TLS, bind, missing search base, timeout, server-side error) raises
  DirectoryUnavailable with a reason naming the server; the thread's connection is dropped and
  the next call reconnects, so a restarted slapd is used again without restarting policyd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException, LDAPInvalidFilterError
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars

from policyd.addresses import (
    AddressRules,
    canonical_login,
    normalize_address,
    split_address,
)
from policyd.config import LdapConfig
from policyd.directory.base import DirectoryError, DirectoryUnavailable

#: An address-type prefix as in Active Directory's proxyAddresses ("smtp:", "X500:", "sip:").
_ADDRESS_TYPE = re.compile(r"^([A-Za-z][A-Za-z0-9]{1,7}):")

log = logging.getLogger(__name__)

# ldap3 calls ssl.match_hostname on every TLS connect, deprecated since Python 3.7 (and removed
# in 3.12, where ldap3 uses a backport that cannot match IP SANs: use DNS names there).
warnings.filterwarnings(
    "ignore", message=r"ssl\.match_hostname\(\) is deprecated", category=DeprecationWarning
)

#: A server that failed is tried after the others for this long (seconds).
_DOWN_FOR: Final = 30.0
#: A connection to a lower-priority server tries the preferred one again after this (seconds).
_FAILBACK_AFTER: Final = 60.0
#: owners_of reads at most this many group-member entries per call.
_MAX_MEMBER_READS: Final = 100
#: Default LDAPI socket (Debian's slapd) for "ldapi:///".
_DEFAULT_LDAPI: Final = "/var/run/slapd/ldapi"

_SCOPES: Final = {"base": ldap3.BASE, "one": ldap3.LEVEL, "sub": ldap3.SUBTREE}

_SUCCESS: Final = 0
_SIZE_LIMIT_EXCEEDED: Final = 4
_NO_SUCH_OBJECT: Final = 32
#: Result codes after which this server should not be used for a while.
_SERVER_TROUBLE: Final = frozenset({1, 3, 11, 51, 52, 53, 80})


# ---------------------------------------------------------------------------------------------
# Escaping and templates


def escape_value(value: str) -> str:
    """An RFC 4515 assertion value for any str, including surrogateescape'd bytes and NUL.

    Valid UTF-8 text goes through ldap3's escape_filter_chars (* ( ) \\ NUL become \\2a \\28
    \\29 \\5c \\00); whitespace becomes \\XX too (ldap3 strips it otherwise). Text that
    cannot be UTF-8 encoded (lone surrogates) is sent as \\XX escapes of all its bytes:
    nothing raw reaches the wire and nothing raises."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
        return "".join(f"\\{b:02x}" for b in raw)
    escaped = escape_filter_chars(value)
    assert isinstance(escaped, str)
    if any(ch.isspace() for ch in escaped):
        # ldap3's filter parser strip()s each assertion: keep edge whitespace by escaping it.
        escaped = "".join(
            "".join(f"\\{b:02x}" for b in ch.encode("utf-8")) if ch.isspace() else ch
            for ch in escaped
        )
    return escaped


def render_filter(template: str, **values: str) -> str:
    """Fill a filter template; every value is escaped first."""
    return template.format_map({k: escape_value(v) for k, v in values.items()})


def _check_filter(key: str, template: str, names: Iterable[str]) -> None:
    sample = {n: "x" for n in names}
    try:
        text = template.format_map(sample)
    except (KeyError, IndexError, ValueError) as e:
        raise DirectoryError(f"ldap.{key}: bad template {template!r}: {e}") from None
    try:
        parse_filter(text, None, False, True, None, False)
    except LDAPInvalidFilterError as e:
        raise DirectoryError(f"ldap.{key}: not a valid LDAP filter {template!r}: {e}") from None


_MEMBERSHIP_RE = re.compile(r"\(([A-Za-z][A-Za-z0-9-]*(?:;[A-Za-z0-9-]+)*)=\{(dn|login)\}\)")


@dataclass(frozen=True)
class _ReverseGroups:
    """group_filter split around its membership assertion, for "groups holding an address"."""

    prefix: str
    suffix: str
    member_attribute: str
    members_are_dns: bool


def _reverse_groups(group_filter: str) -> _ReverseGroups | None:
    matches = list(_MEMBERSHIP_RE.finditer(group_filter))
    if len(matches) != 1:
        return None
    m = matches[0]
    prefix, suffix = group_filter[: m.start()], group_filter[m.end() :]
    try:
        prefix, suffix = prefix.format(), suffix.format()  # no other placeholder; {{ }} -> { }
    except (KeyError, IndexError, ValueError):
        return None
    return _ReverseGroups(prefix, suffix, m.group(1), m.group(2) == "dn")


# ---------------------------------------------------------------------------------------------
# DNs (just enough: split on unescaped separators, unescape an RDN value)


def _split_unescaped(text: str, seps: str) -> list[tuple[str, str]]:
    """[(part, separator_after)]: splits at separators not preceded by a backslash."""
    out: list[tuple[str, str]] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch in seps:
            out.append(("".join(cur), ch))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append(("".join(cur), ""))
    return out


def _unescape_dn_value(value: str) -> str | None:
    """RFC 4514 value -> text; None for forms we do not decode (#hex BER)."""
    if value.startswith("#"):
        return None
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                i += 3
            else:
                out += value[i + 1].encode("utf-8", "surrogateescape")
                i += 2
            continue
        out += ch.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _first_rdn(dn: str) -> tuple[str, str] | None:
    """(attribute, value) of a single-valued first RDN, else None."""
    parts = _split_unescaped(dn, ",+")
    if not parts or parts[0][1] == "+":
        return None
    attr, eq, value = parts[0][0].partition("=")
    if not eq:
        return None
    text = _unescape_dn_value(value.strip())
    if text is None:
        return None
    return attr.strip(), text


def default_group_base(user_base: str) -> str:
    """The domain-component suffix of user_base; without dc= RDNs, its last RDN."""
    rdns = [p.strip() for p, _ in _split_unescaped(user_base, ",")]
    rdns = [r for r in rdns if r]
    if not rdns:
        return user_base
    i = len(rdns)
    while i > 0 and rdns[i - 1].lower().startswith("dc="):
        i -= 1
    if i == len(rdns):
        return rdns[-1]
    return ",".join(rdns[i:])


# ---------------------------------------------------------------------------------------------
# Servers, credentials, TLS


@dataclass(frozen=True)
class ServerSpec:
    url: str
    scheme: str  # ldap | ldaps | ldapi
    host: str  # host name / address, or the socket path for ldapi
    port: int | None
    start_tls: bool  # StartTLS on this server (ldap:// with ldap.start_tls)

    @property
    def tls(self) -> bool:
        return self.scheme == "ldaps" or self.start_tls

    def server(self, cfg: LdapConfig, tls: Any) -> Any:
        if self.scheme == "ldapi":
            return ldap3.Server(
                "ldapi://" + self.host.replace("/", "%2F"),
                get_info=ldap3.NONE,
                connect_timeout=cfg.connect_timeout,
            )
        return ldap3.Server(
            self.host,
            port=self.port,
            use_ssl=self.scheme == "ldaps",
            get_info=ldap3.NONE,
            connect_timeout=cfg.connect_timeout,
            tls=tls if self.tls else None,
        )


def parse_server_url(url: str, start_tls: bool) -> ServerSpec:
    """ldap://host[:port][/], ldaps://host[:port][/], ldapi://%2Fpath or ldapi:///.
    Raises DirectoryError."""
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError as e:
        raise DirectoryError(f"ldap.servers: {url!r}: {e}") from None
    scheme = u.scheme.lower()
    if scheme not in ("ldap", "ldaps", "ldapi"):
        raise DirectoryError(f"ldap.servers: {url!r}: scheme must be ldap, ldaps or ldapi")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise DirectoryError(
            f"ldap.servers: {url!r}: only scheme://host[:port] (set the search base in ldap.user_base)"
        )
    if scheme == "ldapi":
        path = unquote(u.netloc) or _DEFAULT_LDAPI
        return ServerSpec(url, scheme, path, None, False)
    if not u.hostname:
        raise DirectoryError(f"ldap.servers: {url!r}: no host")
    default = 636 if scheme == "ldaps" else 389
    return ServerSpec(url, scheme, u.hostname, port or default, start_tls and scheme == "ldap")


def read_bind_password(cfg: LdapConfig) -> str | None:
    """The bind password: ldap.bind_password_file if set, else the systemd credential
    $CREDENTIALS_DIRECTORY/<ldap.bind_password_credential>. One trailing newline is stripped.
    None without a bind DN (anonymous). Raises DirectoryError, never showing the password."""
    if not cfg.bind_dn:
        return None
    if cfg.bind_password_file is not None:
        path = Path(cfg.bind_password_file)
        what = "ldap.bind_password_file"
    elif cfg.bind_password_credential:
        creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
        if not creds:
            raise DirectoryError(
                f"ldap.bind_password_credential = {cfg.bind_password_credential!r}, but "
                "$CREDENTIALS_DIRECTORY is not set (run under systemd with LoadCredential=)"
            )
        path = Path(creds) / cfg.bind_password_credential
        what = "ldap.bind_password_credential"
    else:
        raise DirectoryError(
            "ldap.bind_dn is set but neither ldap.bind_password_file nor "
            "ldap.bind_password_credential is"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DirectoryError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DirectoryError(f"{what}: {path} is not UTF-8") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise DirectoryError(f"{what}: {path} is empty")
    return text


def _make_tls(cfg: LdapConfig) -> Any:
    validate = ssl.CERT_REQUIRED if cfg.tls_validate else ssl.CERT_NONE
    ca = str(cfg.ca_file) if cfg.ca_file is not None else None
    if ca is not None and not os.path.exists(ca):
        raise DirectoryError(f"ldap.ca_file: {ca} does not exist")
    try:
        return ldap3.Tls(validate=validate, ca_certs_file=ca)
    except LDAPException as e:
        raise DirectoryError(f"ldap.ca_file: {e}") from None


# ---------------------------------------------------------------------------------------------
# Opening one connection (shared by the directory and check_connection)


class _StepFailed(Exception):
    def __init__(self, step: str, reason: str, timed_out: bool = False) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason, self.timed_out = step, reason, timed_out


def _is_timeout(e: BaseException) -> bool:
    return isinstance(e, (socket.timeout, TimeoutError)) or "timed out" in str(e).lower()


def _describe(e: BaseException, cfg: LdapConfig) -> str:
    text = str(e)
    low = text.lower()
    if _is_timeout(e):
        return f"timed out (connect_timeout {cfg.connect_timeout} s, receive_timeout {cfg.receive_timeout} s)"
    if "refused" in low:
        return "connection refused"
    m = re.search(r"\[SSL: ([A-Z_]+)\][^(\]]*", text)
    if m:
        return f"TLS handshake failed: {m.group(0).strip()}"
    if "doesn't match any name" in text or ("hostname" in low and "match" in low):
        return "TLS failed: the server certificate does not match the host name"
    if "session terminated" in low or "socket is not open" in low:
        return "connection closed by the server"
    text = re.sub(r"\s+", " ", text).strip()
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):  # the connection is being thrown away anyway
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:  # ldap3 leaves the socket of a failed open() behind
        with contextlib.suppress(OSError):
            sock.close()


def _open(
    spec: ServerSpec,
    cfg: LdapConfig,
    tls: Any,
    password: str | None,
    report: list[tuple[str, bool, str]] | None = None,
) -> Any:
    """Open, StartTLS if configured, bind. Returns the bound SAFE_SYNC connection or raises
    _StepFailed(step, reason). With `report`, appends (step, ok, detail) per step passed."""
    authentication = ldap3.SIMPLE if cfg.bind_dn else ldap3.ANONYMOUS
    conn = ldap3.Connection(
        spec.server(cfg, tls),
        user=cfg.bind_dn or None,
        password=password,
        authentication=authentication,
        client_strategy=ldap3.SAFE_SYNC,
        auto_bind=ldap3.AUTO_BIND_NONE,
        receive_timeout=int(cfg.receive_timeout),
        raise_exceptions=False,
        read_only=True,
        auto_referrals=False,
        auto_escape=False,
        check_names=False,
        return_empty_attributes=False,
    )
    step = "connect"
    try:
        conn.open(read_server_info=False)
        if spec.scheme != "ldapi":
            try:
                conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        if report is not None:
            if spec.scheme == "ldaps":
                report.append(("tls", True, _tls_detail(cfg, "LDAPS")))
            else:
                report.append(("connect", True, "LDAP session opened"))
        if spec.start_tls:
            step = "tls"
            ok = conn.start_tls(read_server_info=False)[0]
            if not ok:
                raise _StepFailed("tls", f"StartTLS refused: {_result_text(conn.result)}")
            if report is not None:
                report.append(("tls", True, _tls_detail(cfg, "StartTLS")))
        step = "bind"
        ok, result, _, _ = conn.bind(read_server_info=False)
        if not ok:
            raise _StepFailed("bind", f"bind failed: {_result_text(result)}")
        if report is not None:
            who = f"as {cfg.bind_dn}" if cfg.bind_dn else "anonymously"
            report.append(("bind", True, f"bound {who}"))
        return conn
    except _StepFailed:
        _close_quietly(conn)
        raise
    except Exception as e:  # noqa: BLE001 - LDAPException, but ldap3 lets OSError/ssl/struct/pyasn1 errors through too; all mean "unavailable"
        _close_quietly(conn)
        reason = _describe(e, cfg)
        if step == "connect" and reason.startswith("TLS"):
            step = "tls"
        raise _StepFailed(step, reason, timed_out=_is_timeout(e)) from None


def _tls_detail(cfg: LdapConfig, how: str) -> str:
    if not cfg.tls_validate:
        return f"{how} established, certificate NOT validated (ldap.tls_validate = false)"
    src = f"ldap.ca_file {cfg.ca_file}" if cfg.ca_file else "the system CA store"
    return f"{how} established, certificate verified against {src}"


def _result_text(result: Mapping[str, Any] | None) -> str:
    if not result:
        return "no result"
    desc = str(result.get("description") or result.get("result"))
    msg = str(result.get("message") or "").strip()
    hint = {
        "invalidCredentials": "wrong bind DN or password",
        "noSuchObject": "does not exist, or the bind DN may not read it",
        "insufficientAccessRights": "the bind DN lacks the rights",
        "confidentialityRequired": "the server requires TLS: use ldaps:// or ldap.start_tls",
        "strongerAuthRequired": "the server requires TLS: use ldaps:// or ldap.start_tls",
        "unwillingToPerform": "the server refused",
    }.get(desc, "")
    extra = "; ".join(x for x in (msg, hint) if x)
    return f"{desc} ({extra})" if extra else desc


# ---------------------------------------------------------------------------------------------
# The directory


@dataclass
class _Conn:
    conn: Any
    index: int  # position in the server list
    epoch: int  # that server's epoch when opened
    opened: float
    next_failback: float


class _Found:
    """One search's result."""

    __slots__ = ("entries", "truncated")

    def __init__(self, entries: list[dict[str, Any]], truncated: bool) -> None:
        self.entries, self.truncated = entries, truncated


class LdapDirectory:
    """Directory backend over LDAP. Thread-safe; each calling thread gets its own connection.
    Connecting is lazy (the first lookup); construction only validates and reads the password.
    Raises DirectoryError on a bad setup (unreadable password, bad filter, bad URL)."""

    blocking = True

    def __init__(self, cfg: LdapConfig, rules: AddressRules) -> None:
        self.cfg = cfg
        self.rules = rules
        if not cfg.servers:
            raise DirectoryError("ldap.servers: no server configured")
        self._specs = [parse_server_url(u, cfg.start_tls) for u in cfg.servers]
        self._tls = _make_tls(cfg)
        self._password = read_bind_password(cfg)
        for key, tmpl, names in (
            ("user_filter", cfg.user_filter, ("login", "localpart", "domain")),
            ("group_filter", cfg.group_filter, ("dn", "login")),
            ("owner_filter", cfg.owner_filter, ("address", "localpart", "domain")),
        ):
            _check_filter(key, tmpl, names)
        self._scope_user = _SCOPES[cfg.user_scope]
        self._scope_group = _SCOPES[cfg.group_scope]
        self.group_base = cfg.group_base or default_group_base(cfg.user_base)
        self._user_attrs = list(cfg.user_attributes)
        self._group_attrs = list(cfg.group_attributes)
        self._reverse = _reverse_groups(cfg.group_filter) if self._group_attrs else None
        if self._group_attrs and self._reverse is None:
            log.warning(
                "ldap.group_filter %r has no single (ATTR={dn}) or (ATTR={login}) term: "
                "owners_of will not report owners through groups",
                cfg.group_filter,
            )
        if not cfg.tls_validate and any(s.tls for s in self._specs):
            log.warning(
                "ldap.tls_validate = false: the LDAP server's certificate is NOT checked; "
                "anyone on the path can impersonate it"
            )
        if cfg.bind_dn and any(
            not s.tls and s.scheme == "ldap" and s.host not in ("127.0.0.1", "::1", "localhost")
            for s in self._specs
        ):
            log.warning(
                "the LDAP bind password is sent unencrypted to a non-local server: "
                "use ldaps:// or ldap.start_tls = true"
            )
        self._lock = threading.Lock()
        self._local = threading.local()
        self._registry: dict[int, _Conn] = {}
        self._down_until = [0.0] * len(self._specs)
        self._epoch = [0] * len(self._specs)
        self._closed = False
        self._budget = float(max(cfg.connect_timeout, cfg.receive_timeout))

    # -- Directory protocol ------------------------------------------------------------

    def addresses_of(self, login: str) -> frozenset[str]:
        if not login:
            return frozenset()
        localpart, domain = split_address(login)
        filt = render_filter(self.cfg.user_filter, login=login, localpart=localpart, domain=domain)
        found = self._search(self.cfg.user_base, self._scope_user, filt, self._user_attrs, 2)
        entries = found.entries
        if len(entries) > 1 or found.truncated:
            log.warning(
                "LDAP: login %r matches more than one entry under %s (%s): treated as unknown",
                login,
                self.cfg.user_base,
                ", ".join(e["dn"] for e in entries),
            )
            return frozenset()
        if not entries:
            return frozenset()
        entry = entries[0]
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

    def owners_of(self, address: str) -> frozenset[str]:
        key = normalize_address(address, self.rules)
        local, domain = split_address(key)
        if not domain:
            return frozenset()
        filt = render_filter(self.cfg.owner_filter, address=key, localpart=local, domain=domain)
        login_attr = self.cfg.owner_login_attribute
        attrs = [login_attr, *self.cfg.user_attributes]
        owners: set[str] = set()
        found = self._search(self.cfg.user_base, self._scope_user, filt, attrs, 0)
        for e in found.entries:
            held = self._addresses(e, self.cfg.user_attributes)
            # Only entries that hold exactly this key own it (an owner_filter may also match
            # the "@domain" of an address); an entry whose addresses cannot be read at all is
            # kept: a false owner refuses a sender, a missed one could let a spoofer through.
            if key in held or not held:
                owners.update(self._logins(e, login_attr))
        if self._reverse is not None:
            owners.update(self._group_owners([key]))
        return frozenset(owners)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._registry.values())
            self._registry.clear()
        for c in conns:
            _close_quietly(c.conn)

    # -- results -----------------------------------------------------------------------

    def _values(self, entry: Mapping[str, Any], attrs: Sequence[str]) -> list[str]:
        wanted = {a.lower() for a in attrs}
        raw = entry.get("raw_attributes") or {}
        out: list[str] = []
        for name, values in raw.items():
            if name.split(";", 1)[0].lower() not in wanted:
                continue
            for v in values:
                if isinstance(v, bytes):
                    out.append(v.decode("utf-8", "surrogateescape"))
                else:
                    out.append(str(v))
        return out

    def _addresses(self, entry: Mapping[str, Any], attrs: Sequence[str]) -> list[str]:
        out = []
        for v in self._values(entry, attrs):
            # Active Directory's proxyAddresses: "SMTP:primary@x", "smtp:alias@x", and other
            # address types ("X500:…", "sip:…") that are not mail addresses.
            m = _ADDRESS_TYPE.match(v)
            if m is not None:
                if m.group(1).lower() != "smtp":
                    continue
                v = v[m.end() :]
            a = normalize_address(v, self.rules)
            local, domain = split_address(a)
            if not domain or "@" not in a:
                continue  # not an address nor an @domain
            out.append(a)
        return out

    def _logins(self, entry: Mapping[str, Any], attr: str) -> list[str]:
        return [canonical_login(v, self.rules) for v in self._values(entry, [attr]) if v.strip()]

    def _group_owners(self, keys: list[str]) -> set[str]:
        rev = self._reverse
        assert rev is not None
        tests = "".join(
            f"({a}={escape_value(k)})" for a in self._group_attrs for k in dict.fromkeys(keys)
        )
        filt = f"{rev.prefix}(|{tests}){rev.suffix}"
        found = self._search(self.group_base, self._scope_group, filt, [rev.member_attribute], 0)
        owners: set[str] = set()
        login_attr = self.cfg.owner_login_attribute.lower()
        to_read: list[str] = []
        for g in found.entries:
            for member in self._values(g, [rev.member_attribute]):
                if not rev.members_are_dns:
                    if member.strip():
                        owners.add(canonical_login(member, self.rules))
                    continue
                rdn = _first_rdn(member)
                if rdn is not None and rdn[0].lower() == login_attr:
                    owners.add(canonical_login(rdn[1], self.rules))
                else:
                    to_read.append(member)
        if len(to_read) > _MAX_MEMBER_READS:
            log.warning(
                "LDAP: owners_of(%s): %d group members need an entry read; reading the first %d",
                keys[0],
                len(to_read),
                _MAX_MEMBER_READS,
            )
        for dn in to_read[:_MAX_MEMBER_READS]:
            read = self._search(
                dn,
                ldap3.BASE,
                "(objectClass=*)",
                [self.cfg.owner_login_attribute],
                0,
                missing_ok=True,  # a dangling member
            )
            for e in read.entries:
                owners.update(self._logins(e, self.cfg.owner_login_attribute))
        return owners

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
        _close_quietly(c.conn)

    def _register(self, c: _Conn) -> None:
        with self._lock:
            if self._closed:
                _close_quietly(c.conn)
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
                conn = _open(spec, self.cfg, self._tls, self._password)
            except _StepFailed as e:
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
                        _close_quietly(c.conn)
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
    ) -> _Found:
        for attempt in (0, 1):
            c, fresh = self._acquire()
            url = self._specs[c.index].url
            try:
                _ok, result, response, _ = c.conn.search(
                    base,
                    filt,
                    search_scope=scope,
                    attributes=attrs,
                    size_limit=size_limit,
                    time_limit=int(self.cfg.receive_timeout),
                )
            except Exception as e:  # noqa: BLE001 - LDAPException, or OSError/ssl/pyasn1 errors ldap3 lets through; callers must only ever see DirectoryUnavailable
                self._drop(c)
                timed_out = _is_timeout(e)
                if attempt == 0 and not fresh and not timed_out:
                    # A kept connection failed at once: the server restarted or closed it
                    # (idletimeout). Not a reason to avoid the server: reconnect in order, and
                    # the connect marks it down if it is really gone.
                    log.info("LDAP: %s: %s; reconnecting", url, _describe(e, self.cfg))
                    continue
                self._mark_down(c.index)
                raise DirectoryUnavailable(
                    f"{url}: search failed: {_describe(e, self.cfg)}"
                ) from None
            code = int(result.get("result", -1)) if result else -1
            if code in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
                entries = [r for r in (response or []) if r.get("type") == "searchResEntry"]
                return _Found(entries, code == _SIZE_LIMIT_EXCEEDED)
            if code == _NO_SUCH_OBJECT:
                if missing_ok:
                    return _Found([], False)
                raise DirectoryUnavailable(
                    f"{url}: search base {base!r} does not exist (or the bind DN may not read it)"
                )
            if code in _SERVER_TROUBLE or code < 0:
                self._drop(c)
                self._mark_down(c.index)
            raise DirectoryUnavailable(f"{url}: search failed: {_result_text(result)}")
        raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# config-check --connect


def check_connection(cfg: LdapConfig) -> tuple[bool, list[str]]:
    """Diagnose the LDAP setup step by step, for every configured server.

    Returns (ok, lines): ok only when every server passed every step. The steps, each a line
    "URL: step: ok/FAILED: detail": password (read), url, dns, tcp, tls (ldaps:// or
    StartTLS), bind, search base (user_base, then group_base). A server's steps stop at its
    first failure. Never raises for a connection problem; never prints the password."""
    lines: list[str] = []
    ok = True

    def add(where: str, step: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok = ok and good
        lines.append(f"{where}: {step}: {'ok' if good else 'FAILED'}: {detail}")

    try:
        password = read_bind_password(cfg)
        add(
            "ldap",
            "password",
            True,
            "none: anonymous bind" if password is None else "read (not shown)",
        )
    except DirectoryError as e:
        add("ldap", "password", False, str(e))
        return False, lines
    try:
        tls = _make_tls(cfg)
    except DirectoryError as e:
        add("ldap", "tls setup", False, str(e))
        return False, lines
    if not cfg.servers:
        add("ldap", "servers", False, "ldap.servers is empty")
    group_base = cfg.group_base or default_group_base(cfg.user_base)
    for url in cfg.servers:
        try:
            spec = parse_server_url(url, cfg.start_tls)
        except DirectoryError as e:
            add(url, "url", False, str(e))
            continue
        _check_server(spec, cfg, tls, password, group_base, add)
    return ok, lines


def _check_server(
    spec: ServerSpec,
    cfg: LdapConfig,
    tls: Any,
    password: str | None,
    group_base: str,
    add: Callable[[str, str, bool, str], None],
) -> bool:
    where = spec.url
    if spec.scheme == "ldapi":
        if not os.path.exists(spec.host):
            add(where, "socket", False, f"{spec.host} does not exist")
            return False
        add(where, "socket", True, spec.host)
    else:
        assert spec.port is not None
        try:
            infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            add(where, "dns", False, f"cannot resolve {spec.host!r}: {e.strerror or e}")
            return False
        addrs = list(dict.fromkeys(str(i[4][0]) for i in infos))
        add(where, "dns", True, f"{spec.host} -> {', '.join(addrs)}")
        t0 = time.monotonic()
        try:
            with socket.create_connection((spec.host, spec.port), timeout=cfg.connect_timeout):
                pass
        except OSError as e:
            why = (
                f"no answer within connect_timeout {cfg.connect_timeout} s"
                if _is_timeout(e)
                else (e.strerror or str(e)).lower()
            )
            add(where, "tcp", False, f"port {spec.port}: {why}")
            return False
        add(where, "tcp", True, f"port {spec.port} open ({(time.monotonic() - t0) * 1000:.1f} ms)")
        if not spec.tls:
            add(where, "tls", True, "none (plain ldap://; ldap.start_tls is false)")
    report: list[tuple[str, bool, str]] = []
    try:
        conn = _open(spec, cfg, tls, password, report)
    except _StepFailed as e:
        for step, good, detail in report:
            add(where, step, good, detail)
        add(where, e.step, False, e.reason)
        return False
    for step, good, detail in report:
        add(where, step, good, detail)
    try:
        for what, base, scope in (
            ("user_base", cfg.user_base, cfg.user_scope),
            ("group_base", group_base, cfg.group_scope),
        ):
            try:
                _ok, result, _, _ = conn.search(
                    base,
                    "(objectClass=*)",
                    search_scope=ldap3.BASE,
                    attributes=["1.1"],
                    time_limit=int(cfg.receive_timeout),
                )
            except Exception as e:  # noqa: BLE001 - reported, not raised
                add(where, f"search base {what}", False, f"{base}: {_describe(e, cfg)}")
                return False
            code = int(result.get("result", -1)) if result else -1
            if code != _SUCCESS:
                add(where, f"search base {what}", False, f"{base}: {_result_text(result)}")
                return False
            add(where, f"search base {what}", True, f"{base} exists (scope {scope})")
        return True
    finally:
        _close_quietly(conn)
