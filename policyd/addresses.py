"""Normalising and matching sender addresses and SASL logins. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class AddressRules:
    #: RFC 5321 lets the local part be case-sensitive; in practice no mailbox provider is, and
    #: Postfix's own sender_login_maps casefold the whole address.
    case_sensitive_localpart: bool = False
    #: Characters that start an address extension (Postfix recipient_delimiter), "" for none.
    extension_delimiters: str = "+"
    #: Realms (domains) whose logins are the same as the bare user: with "example.org" here,
    #: "alice@example.org" and "alice" are one login (Postfix reports either form depending on
    #: smtpd_sasl_local_domain).
    realms: frozenset[str] = frozenset()
    case_sensitive_login: bool = False


DEFAULT_RULES: Final = AddressRules()


def normalize_domain(domain: str) -> str:
    """Lowercase, drop a trailing dot, IDN to its ASCII (punycode) form."""
    d = domain.strip().rstrip(". \t").lower()  # (trailing dots and blanks in any order)
    if d.isascii():
        return d
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


def split_address(address: str) -> tuple[str, str]:
    """Split at the last "@" (a quoted local part may contain "@"). No "@": ("addr", "")."""
    local, at, domain = address.rpartition("@")
    if not at:
        return domain, ""
    return local, domain


def normalize_address(address: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The form addresses are compared in. "@domain" entries keep their leading "@"."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    local, domain = split_address(a)
    if not rules.case_sensitive_localpart:
        local = local.lower()
    local = unquote_local(local)
    if "@" not in a:
        return local
    return f"{local}@{normalize_domain(domain)}"


def strip_extension(local: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """ "alice+tag" -> "alice" (the first delimiter character found ends the user part)."""
    if not rules.extension_delimiters:
        return local
    for i, ch in enumerate(local):
        if ch in rules.extension_delimiters and i > 0:
            return local[:i]
    return local


def candidates(sender: str, rules: AddressRules = DEFAULT_RULES) -> tuple[str, ...]:
    """Keys under which a sender may be owned, most specific first: the address, the address
    without its extension, then "@domain" (as Postfix's sender_login_maps search them)."""
    full = normalize_address(sender, rules)
    local, domain = split_address(full)
    out = [full]
    if not domain:
        return tuple(out)
    bare = strip_extension(local, rules)
    if bare != local:
        out.append(f"{bare}@{domain}")
    out.append(f"@{domain}")
    return tuple(out)


def owned_by(owned: frozenset[str], sender: str, rules: AddressRules = DEFAULT_RULES) -> bool:
    """True when one of the sender's candidate keys is among the owned addresses. (Not the
    ownership rule by itself: a more specific key may belong to someone else; see `owns`.)"""
    return any(c in owned for c in candidates(sender, rules))


def keys_to_resolve(
    owned: frozenset[str], sender: str, rules: AddressRules = DEFAULT_RULES
) -> tuple[str, ...]:
    """The keys whose owners must be known before `owns` can answer for a login that owns
    `owned`: those more specific than the first key the login owns. Empty when the login owns
    the exact address, or owns none of the keys (either answer is then final)."""
    keys = candidates(sender, rules)
    for i, key in enumerate(keys):
        if key in owned:
            return keys[:i]
    return ()


def owns(
    login: str,
    owned: frozenset[str],
    sender: str,
    key_owners: Mapping[str, frozenset[str]],
    rules: AddressRules = DEFAULT_RULES,
) -> bool | None:
    """Postfix's smtpd_sender_login_maps rule: of the sender's keys, most specific first, the
    first one that has ANY owner decides, and the login must be among its owners; a key nobody
    owns falls through to the next. `owned` is the login's own addresses; `key_owners` the
    owners of the keys `keys_to_resolve` names. None when one of those was not looked up."""
    keys = candidates(sender, rules)
    if not any(key in owned for key in keys):
        return False  # whoever owns a key, it is not this login
    for key in keys:
        if key in owned:
            return True
        others = key_owners.get(key)
        if others is None:
            return None
        if others:
            return login in others
    return False  # (not reached: some key is owned)


def canonical_login(login: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The form logins are compared in: case-folded, realm dropped when it is a local realm."""
    name = login.strip()
    if not rules.case_sensitive_login:
        name = name.lower()
    user, at, realm = name.rpartition("@")
    if at and user and realm.lower() in rules.realms:
        return user
    return name


def sender_domain(sender: str) -> str:
    return normalize_domain(split_address(sender.strip())[1])


# RFC 5322 atext (plus any non-ASCII character, RFC 6531): what a dot-atom local part may hold.
_ATEXT: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)


def unquote_local(local: str) -> str:
    """RFC 5321 4.1.2: a quoted local part that needs no quoting is the same mailbox as the bare
    one: '"alice"' -> 'alice', '"a\\.b"' -> 'a.b'. One that does need quoting keeps its quotes,
    in the minimal form (only '"' and '\\' escaped): '"a\\ b"' -> '"a b"', '"a@b"' stays.
    Anything that is not exactly one quoted string is returned unchanged."""
    if len(local) < 2 or local[0] != '"' or local[-1] != '"':
        return local
    chars: list[str] = []
    escaped = False
    for ch in local[1:-1]:
        if escaped:
            chars.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return local  # an unescaped quote inside: not one quoted string
        else:
            chars.append(ch)
    if escaped:
        return local  # the closing quote is escaped
    text = "".join(chars)
    parts = text.split(".")
    if all(part and all(c in _ATEXT or ord(c) > 127 for c in part) for part in parts):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
