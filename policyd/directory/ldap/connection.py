"""Connecting to one LDAP server: server URLs, TLS, the bind password, opening a connection and
describing what went wrong (shared by the directory and the `config-check --connect` diagnosis).

Decisions worth knowing:

* Timeouts: `connect_timeout` bounds the TCP connect; `receive_timeout` every later read (TLS
  handshake, bind, search).
* Every failure to open (network, TLS, bind) raises StepFailed naming the step and a reason
  an operator can act on (describe_error, result_text); never the password.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException

from policyd.config import LdapConfig
from policyd.credentials import CredentialError, read_password
from policyd.directory.base import DirectoryError
from policyd.directory.ldap.tls import Tls

log = logging.getLogger(__name__)

# ldap3 calls ssl.match_hostname on every TLS connect, deprecated since Python 3.7 (and removed
# in 3.12, where ldap3 uses a backport that cannot match IP SANs: use DNS names there).
warnings.filterwarnings(
    "ignore", message=r"ssl\.match_hostname\(\) is deprecated", category=DeprecationWarning
)

#: Default LDAPI socket (Debian's slapd) for "ldapi:///".
_DEFAULT_LDAPI: Final = "/var/run/slapd/ldapi"

#: LDAP result codes.
SUCCESS: Final = 0
SIZE_LIMIT_EXCEEDED: Final = 4
NO_SUCH_OBJECT: Final = 32
#: Result codes after which this server should not be used for a while.
SERVER_TROUBLE: Final = frozenset({1, 3, 11, 51, 52, 53, 80})

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
            f"ldap.servers: {url!r}: only scheme://host[:port] "
            "(set the search base in ldap.user_base)"
        )
    if scheme == "ldapi":
        path = unquote(u.netloc) or _DEFAULT_LDAPI
        return ServerSpec(url, scheme, path, None, False)
    if not u.hostname:
        raise DirectoryError(f"ldap.servers: {url!r}: no host")
    default = 636 if scheme == "ldaps" else 389
    return ServerSpec(url, scheme, u.hostname, port or default, start_tls and scheme == "ldap")


def warn_insecure_transport(cfg: LdapConfig, specs: Sequence[ServerSpec]) -> None:
    """Log a warning for each way these servers expose the directory or the bind password."""
    if not cfg.tls_validate and any(s.tls for s in specs):
        log.warning(
            "ldap.tls_validate = false: the LDAP server's certificate is NOT checked; "
            "anyone on the path can impersonate it"
        )
    if cfg.bind_dn and any(
        not s.tls and s.scheme == "ldap" and s.host not in ("127.0.0.1", "::1", "localhost")
        for s in specs
    ):
        log.warning(
            "the LDAP bind password is sent unencrypted to a non-local server: "
            "use ldaps:// or ldap.start_tls = true"
        )


def read_bind_password(cfg: LdapConfig) -> str | None:
    """The bind password: ldap.bind_password_file if set, else the credential named by
    ldap.bind_password_credential, found as systemd finds it ($CREDENTIALS_DIRECTORY under the
    unit, else /etc/credstore/, /run/credstore/, ... from a shell: policyd.credentials). One
    trailing newline is stripped. None without a bind DN (anonymous). Raises DirectoryError,
    never showing the password."""
    if not cfg.bind_dn:
        return None
    why = cfg.bind_password_problem()
    if why is not None:
        raise DirectoryError(f"ldap.bind_dn: {why}")
    try:
        return read_password(
            cfg.bind_password_file, cfg.bind_password_credential, "ldap.bind_password"
        )
    except CredentialError as e:
        raise DirectoryError(str(e)) from None


def make_tls(cfg: LdapConfig) -> Any:
    validate = ssl.CERT_REQUIRED if cfg.tls_validate else ssl.CERT_NONE
    ca = str(cfg.ca_file) if cfg.ca_file is not None else None
    if ca is not None and not os.path.exists(ca):
        raise DirectoryError(f"ldap.ca_file: {ca} does not exist")
    try:
        return Tls(validate=validate, ca_certs_file=ca)  # (IP-address servers on 3.12+)
    except LDAPException as e:
        raise DirectoryError(f"ldap.ca_file: {e}") from None


# ---------------------------------------------------------------------------------------------
# Opening one connection (shared by the directory and check_connection)


class StepFailed(Exception):
    def __init__(self, step: str, reason: str, timed_out: bool = False) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason, self.timed_out = step, reason, timed_out


def is_timeout(e: BaseException) -> bool:
    return isinstance(e, (socket.timeout, TimeoutError)) or "timed out" in str(e).lower()


def describe_error(e: BaseException, cfg: LdapConfig) -> str:
    text = str(e)
    low = text.lower()
    if is_timeout(e):
        return (
            f"timed out (connect_timeout {cfg.connect_timeout} s, "
            f"receive_timeout {cfg.receive_timeout} s)"
        )
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


def close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):  # the connection is being thrown away anyway
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:  # ldap3 leaves the socket of a failed open() behind
        with contextlib.suppress(OSError):
            sock.close()


# The options every reading connection has: we open, StartTLS and bind step by step, read results
# rather than catch exceptions, follow no referral and escape filters ourselves.
_READER_OPTIONS: Final[Mapping[str, Any]] = {
    "client_strategy": ldap3.SAFE_SYNC,
    "auto_bind": ldap3.AUTO_BIND_NONE,
    "raise_exceptions": False,
    "read_only": True,
    "auto_referrals": False,
    "auto_escape": False,
    "check_names": False,
    "return_empty_attributes": False,
}


def open_connection(
    spec: ServerSpec,
    cfg: LdapConfig,
    tls: Any,
    password: str | None,
    report: list[tuple[str, bool, str]] | None = None,
) -> Any:
    """Open, StartTLS if configured, bind. Returns the bound SAFE_SYNC connection or raises
    StepFailed(step, reason). With `report`, appends (step, ok, detail) per step passed."""
    authentication = ldap3.SIMPLE if cfg.bind_dn else ldap3.ANONYMOUS
    conn = ldap3.Connection(
        spec.server(cfg, tls),
        user=cfg.bind_dn or None,
        password=password,
        authentication=authentication,
        receive_timeout=int(cfg.receive_timeout),
        **_READER_OPTIONS,
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
                raise StepFailed("tls", f"StartTLS refused: {result_text(conn.result)}")
            if report is not None:
                report.append(("tls", True, _tls_detail(cfg, "StartTLS")))
        step = "bind"
        ok, result, _, _ = conn.bind(read_server_info=False)
        if not ok:
            raise StepFailed("bind", f"bind failed: {result_text(result)}")
        if report is not None:
            who = f"as {cfg.bind_dn}" if cfg.bind_dn else "anonymously"
            report.append(("bind", True, f"bound {who}"))
        return conn
    except StepFailed:
        close_quietly(conn)
        raise
    except Exception as e:  # noqa: BLE001 - LDAPException, but ldap3 lets OSError/ssl/struct/pyasn1 errors through too; all mean "unavailable"
        close_quietly(conn)
        reason = describe_error(e, cfg)
        if step == "connect" and reason.startswith("TLS"):
            step = "tls"
        raise StepFailed(step, reason, timed_out=is_timeout(e)) from None


def _tls_detail(cfg: LdapConfig, how: str) -> str:
    if not cfg.tls_validate:
        return f"{how} established, certificate NOT validated (ldap.tls_validate = false)"
    src = f"ldap.ca_file {cfg.ca_file}" if cfg.ca_file else "the system CA store"
    return f"{how} established, certificate verified against {src}"


def result_text(result: Mapping[str, Any] | None) -> str:
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


#: The simple paged results control (RFC 2696).
_PAGED_RESULTS: Final = "1.2.840.113556.1.4.319"


def page_cookie(result: Mapping[str, Any] | None) -> bytes | None:
    """The cookie for the next page of a paged search; None (or b"") after the last page."""
    controls = (result or {}).get("controls") or {}
    value = (controls.get(_PAGED_RESULTS) or {}).get("value") or {}
    cookie = value.get("cookie")
    return cookie if isinstance(cookie, bytes) else None
