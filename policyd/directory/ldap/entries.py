"""What a search-result entry holds: its attribute values as text, the mail addresses among
them, the logins among them.

Decisions worth knowing:

* Values are normalised with normalize_address; "@domain" values mean the whole domain; a
  value that is neither an address nor an "@domain" is ignored, and so is one whose domain
  IDNA 2008 refuses (it owns nothing: no sender's key can be that domain).
* Active Directory's proxyAddresses are understood: "SMTP:"/"smtp:" prefixes are removed, other
  address types ("X500:", "sip:") are not mail addresses.
* Values that are not valid UTF-8 are kept as surrogateescape'd text, never dropped or raised.
* All logins go through canonical_login.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from policyd.addresses import (
    AddressRules,
    InvalidDomain,
    canonical_login,
    idna_domain,
    normalize_address,
    split_address,
)

#: An address-type prefix as in Active Directory's proxyAddresses ("smtp:", "X500:", "sip:").
_ADDRESS_TYPE = re.compile(r"^([A-Za-z][A-Za-z0-9]{1,7}):")


def entry_values(entry: Mapping[str, Any], attrs: Sequence[str]) -> list[str]:
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


def entry_addresses(
    entry: Mapping[str, Any], attrs: Sequence[str], rules: AddressRules
) -> list[str]:
    out = []
    for v in entry_values(entry, attrs):
        # Active Directory's proxyAddresses: "SMTP:primary@x", "smtp:alias@x", and other
        # address types ("X500:…", "sip:…") that are not mail addresses.
        m = _ADDRESS_TYPE.match(v)
        if m is not None:
            if m.group(1).lower() != "smtp":
                continue
            v = v[m.end() :]
        a = normalize_address(v, rules)
        local, domain = split_address(a)
        if not domain or "@" not in a:
            continue  # not an address nor an @domain
        try:
            idna_domain(split_address(v)[1])
        except InvalidDomain:
            continue
        out.append(a)
    return out


def entry_logins(entry: Mapping[str, Any], attr: str, rules: AddressRules) -> list[str]:
    return [canonical_login(v, rules) for v in entry_values(entry, [attr]) if v.strip()]


def entry_identity(entry: Mapping[str, Any]) -> frozenset[str]:
    """What identifies an entry (see Directory.identity_of): "entryUUID=<uuid>" (it survives a
    rename, and a new entry under the same DN gets a new one), else "dn=<dn>" (lowercased)
    where entryUUID cannot be read; plus "pwdChangedTime=<t>" when the entry has one (the
    ppolicy overlay keeps it: a web session ends when the password changes)."""
    uuids = [v.strip().lower() for v in entry_values(entry, ["entryUUID"]) if v.strip()]
    out = {f"entryUUID={uuids[0]}" if uuids else f"dn={str(entry.get('dn', '')).lower()}"}
    out.update(f"pwdChangedTime={v.strip()}" for v in entry_values(entry, ["pwdChangedTime"]))
    return frozenset(out)
