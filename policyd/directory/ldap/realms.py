"""The addresses.realms check (policyd.directory.realms) against an LDAP directory: every user
entry holding an address at a realm domain, one search per realm domain."""

from __future__ import annotations

from policyd.directory.base import DirectoryError, DirectoryUnavailable
from policyd.directory.ldap.directory import LdapDirectory
from policyd.directory.ldap.entries import entry_addresses
from policyd.directory.ldap.filters import escape_value
from policyd.directory.realms import merge_problems, refuse_merges


def realm_holders(d: LdapDirectory) -> list[tuple[str, list[str]]]:
    """(entry DN, its addresses) of every entry under user_base holding an address at a realm
    domain in one of user_attributes. Raises DirectoryUnavailable, or DirectoryError when the
    answer is incomplete (a size limit): an unchecked merge must not pass."""
    attrs = list(d.cfg.user_attributes)
    out: list[tuple[str, list[str]]] = []
    for domain in sorted(d.rules.realms):
        value = f"*@{escape_value(domain)}"
        terms = "".join(f"({a}={value})" for a in attrs)
        if any(a.lower() == "proxyaddresses" for a in attrs):
            terms += f"(proxyAddresses=smtp:{value})"
        found = d.search_users(f"(|{terms})", attrs)
        if found.truncated:
            raise DirectoryError(
                f"addresses.realms: the entries holding addresses @{domain} exceed the "
                "server's size limit: cannot check that realms merges nobody"
            )
        out += [(e["dn"], entry_addresses(e, attrs, d.rules)) for e in found.entries]
    return out


def check_realms(d: LdapDirectory) -> None:
    """Raise DirectoryError when addresses.realms would merge entries the directory knows as
    different people (or when that cannot be checked)."""
    if len(d.rules.realms) < 2:
        return
    try:
        holders = realm_holders(d)
    except DirectoryUnavailable as e:
        raise DirectoryError(f"addresses.realms: cannot check against the directory: {e}") from e
    refuse_merges(merge_problems(holders, d.rules), f"LDAP {d.cfg.user_base}")
