"""ldap3's server-certificate name check for servers reached by IP address, on Python >= 3.12.

ldap3 (2.9.1, Debian 13's too) checks the server's name itself after the TLS handshake, with
``ssl.match_hostname``. Python 3.12 removed that function; ldap3 then falls back to a copy of
Python 3.4's, which knows DNS names only. So with ``tls_validate = true`` a server written as
an IP address (``ldaps://192.0.2.10``, certificate with ``subjectAltName = IP:192.0.2.10``)
is refused as "doesn't match", although the certificate is right.

`Tls` fixes only that case: for an IP-address host, and only where ``ssl.match_hostname`` is
missing, the address must equal an ``IP Address`` entry of the certificate's subjectAltName
(RFC 6125 section 1.7.2: no commonName fallback for addresses, as the stdlib did). The chain
itself is verified by OpenSSL as before (CERT_REQUIRED); a DNS name is checked by ldap3,
unchanged. The check runs on a per-call copy, so one Tls shared by the lookup threads is never
modified.
"""

from __future__ import annotations

import copy
import ipaddress
import ssl
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPCertificateError

__all__ = ["Tls", "check_ip_address"]

#: True where ldap3's own check handles IP addresses (the stdlib's match_hostname, < 3.12).
_STDLIB_MATCH = hasattr(ssl, "match_hostname")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_ip_address(cert: dict[str, Any] | None, ip: IPAddress) -> None:
    """Raise LDAPCertificateError unless `cert` (getpeercert()) names `ip` in subjectAltName."""
    if not cert:
        raise LDAPCertificateError(f"no server certificate to match against {ip}")
    for key, value in cert.get("subjectAltName", ()):
        if key == "IP Address":
            try:
                if ipaddress.ip_address(str(value).strip()) == ip:
                    return
            except ValueError:
                continue
    raise LDAPCertificateError(
        f"certificate doesn't match any name in {ip} (no IP Address {ip} in subjectAltName)"
    )


class Tls(ldap3.Tls):  # type: ignore[misc]  # (ldap3 is untyped)
    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        ip = _ip(str(connection.server.host))
        if ip is None or _STDLIB_MATCH or self.validate == ssl.CERT_NONE:
            super().wrap_socket(connection, do_handshake)
            return
        # ldap3's DNS-only check would refuse the address: skip it ("*") on a copy, then check
        # the address here. (ldap3 checks nothing without a handshake either.)
        mine = copy.copy(self)
        mine.valid_names = ["*"]
        ldap3.Tls.wrap_socket(mine, connection, do_handshake)
        if do_handshake:
            check_ip_address(connection.socket.getpeercert(), ip)
