"""policyd.directory.ldap.tls: the IP-address name check ldap3 lacks on Python >= 3.12
(the real TLS handshakes against slapd are in tests/integration/test_ldap_directory.py)."""

from __future__ import annotations

import ipaddress

import pytest
from ldap3.core.exceptions import LDAPCertificateError

from policyd.directory.ldap.tls import check_ip_address

V4 = ipaddress.ip_address("127.0.0.1")
V6 = ipaddress.ip_address("2001:db8::1")


def test_an_address_in_the_ip_subject_alt_names_matches() -> None:
    cert = {"subjectAltName": (("DNS", "localhost"), ("IP Address", "127.0.0.1"))}
    check_ip_address(cert, V4)


def test_ipv6_matches_in_openssls_spelling() -> None:
    cert = {"subjectAltName": (("IP Address", "2001:DB8:0:0:0:0:0:1\n"),)}
    check_ip_address(cert, V6)


@pytest.mark.parametrize(
    "cert",
    [
        {"subjectAltName": (("IP Address", "127.0.0.2"),)},
        # a DNS name or a commonName spelling the address does not count (RFC 6125)
        {"subjectAltName": (("DNS", "127.0.0.1"),)},
        {"subject": ((("commonName", "127.0.0.1"),),)},
        {"subjectAltName": (("IP Address", "not an address"),)},
        {},
        None,
    ],
)
def test_anything_else_is_refused(cert: dict[str, object] | None) -> None:
    with pytest.raises(LDAPCertificateError, match="doesn't match any name|no server certificate"):
        check_ip_address(cert, V4)
