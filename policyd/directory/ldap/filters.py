"""LDAP filter values and templates, the reverse group filter, and just enough DN parsing.

Decisions worth knowing:

* Filters are the config templates with {login}, {localpart}, {domain}, {address}, {dn}
  filled in. Every value is escaped (ldap3 escape_filter_chars; a value that is not valid
  UTF-8, e.g. surrogateescape'd bytes, is sent as \\XX escapes of its bytes). A template is
  never formatted with an unescaped value, so no input can change a filter's structure.
* `group_base` empty means the domain-component suffix of `user_base` ("ou=people,dc=example,
  dc=org" -> "dc=example,dc=org"); when user_base has no dc= part, its last RDN ("o=corp").
* The groups holding an address are found with `group_filter` split around its membership
  assertion ("(member={dn})" or "(memberUid={login})"), which the caller replaces by the
  address test (reverse_groups).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ldap3.core.exceptions import LDAPInvalidFilterError
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars

from policyd.directory.base import DirectoryError

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


def check_filter(key: str, template: str, names: Iterable[str]) -> None:
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
class ReverseGroups:
    """group_filter split around its membership assertion, for "groups holding an address"."""

    prefix: str
    suffix: str
    member_attribute: str
    members_are_dns: bool


def reverse_groups(group_filter: str) -> ReverseGroups | None:
    matches = list(_MEMBERSHIP_RE.finditer(group_filter))
    if len(matches) != 1:
        return None
    m = matches[0]
    prefix, suffix = group_filter[: m.start()], group_filter[m.end() :]
    try:
        prefix, suffix = prefix.format(), suffix.format()  # no other placeholder; {{ }} -> { }
    except (KeyError, IndexError, ValueError):
        return None
    return ReverseGroups(prefix, suffix, m.group(1), m.group(2) == "dn")


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


def first_rdn(dn: str) -> tuple[str, str] | None:
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
