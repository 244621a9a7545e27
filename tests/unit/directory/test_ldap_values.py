"""How LDAP attribute values become owned addresses (no server needed: nothing connects)."""

from __future__ import annotations

from policyd.addresses import AddressRules
from policyd.config import LdapConfig
from policyd.directory.ldap import LdapDirectory


def test_active_directory_proxy_addresses() -> None:
    d = LdapDirectory(LdapConfig(servers=("ldap://127.0.0.1:9",)), AddressRules())
    entry = {
        "raw_attributes": {
            "mail": [b"Alice@Example.org"],
            "proxyAddresses": [
                b"SMTP:Alice@Example.org",
                b"smtp:alias@example.net",
                b"X500:/o=Org/ou=Admin/cn=alice",
                b"sip:alice@example.org",
                b"@Dom.example",
            ],
            "cn": [b"someone@else.example"],
        }
    }
    got = d._addresses(entry, ["mail", "proxyAddresses"])
    assert set(got) == {"@dom.example", "alice@example.org", "alias@example.net"}
    d.close()
