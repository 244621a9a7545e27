"""Normalising and matching sender addresses and SASL logins. Pure functions, no I/O.

The keys a sender is owned under are derived the way Postfix derives them for
`reject_sender_login_mismatch` (smtpd_check.c): the sender is first resolved as trivial-rewrite
resolves it (`route_address`: a source route dropped, `domain!user` and `user%domain` turned
into `user@domain`, routing forms inside `$mydestination` domains followed), then looked up as
the address, the address without its extension (`split_extension`, Postfix's split_addr) and
`@domain` (mail_addr_find).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import idna


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
    #: Postfix's smtputf8_enable: True folds local parts in full (Unicode case folding, as
    #: Postfix's casefold()), False lowercases their ASCII letters only.
    smtputf8: bool = True
    #: Postfix's swap_bangpath: "domain!user" (no "@") is "user@domain".
    swap_bangpath: bool = True
    #: Postfix's allow_percent_hack: "user%domain" (no "@") is "user@domain".
    percent_hack: bool = True
    #: Postfix's owner_request_special: with "-" a delimiter, "owner-x" and "x-request" are
    #: not split.
    owner_request_special: bool = True
    #: Postfix's $mydestination (normalised domains): inside them Postfix follows the routing
    #: forms, so "bob%other.example@example.org" is checked as "bob@other.example".
    mydestination: frozenset[str] = frozenset()


DEFAULT_RULES: Final = AddressRules()


class InvalidDomain(ValueError):
    """IDNA 2008 (UTS #46, non-transitional) refuses this domain."""


def idna_domain(domain: str) -> str:
    """The domain in its comparison form, or InvalidDomain: lowercased, trailing dot dropped,
    each label that is not plain ASCII mapped and checked by UTS #46 non-transitional
    processing (IDNA 2008: "ß", final sigma, ZWJ/ZWNJ stay distinct) and given as its A-label;
    an ASCII "xn--" label must be a valid A-label. Plain ASCII labels are only lowercased
    (Postfix allows "_" and other host-name oddities there)."""
    d = domain.strip().rstrip(". \t")  # (trailing dots and blanks in any order)
    if d.isascii() and "xn--" not in d.lower():
        return d.lower()
    try:
        mapped = idna.uts46_remap(d, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError) as e:
        raise InvalidDomain(f"{domain!r}: {e}") from None
    mapped = mapped.rstrip(".")
    out = []
    for label in mapped.split("."):
        if label.isascii() and not label.startswith("xn--"):
            out.append(label)
            continue
        try:
            if label.startswith("xn--"):
                # a valid A-label decodes to a U-label that encodes back to it
                a = idna.alabel(idna.ulabel(label)).decode("ascii")
                if a != label:
                    raise idna.IDNAError(f"{label!r} is not a canonical A-label")
            else:
                a = idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise InvalidDomain(f"{domain!r}: {e}") from None
        out.append(a)
    return ".".join(out)


def normalize_domain(domain: str) -> str:
    """`idna_domain`, for comparing: a domain IDNA 2008 refuses is returned lowercased as
    given, a form no valid key has (its non-ASCII or bad "xn--" label stays), so it is owned by
    nobody. (What must be refused, a directory entry or a verification request, calls
    `idna_domain`.)"""
    try:
        return idna_domain(domain)
    except InvalidDomain:
        return domain.strip().rstrip(". \t").lower()


def split_address(address: str) -> tuple[str, str]:
    """Split at the last "@" (a quoted local part may contain "@"). No "@": ("addr", "")."""
    local, at, domain = address.rpartition("@")
    if not at:
        return domain, ""
    return local, domain


_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def fold_local(local: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The local part's case, folded as Postfix folds lookup keys: with smtputf8_enable full
    Unicode case folding ("Straße" -> "strasse"), without it ASCII letters only."""
    if rules.case_sensitive_localpart:
        return local
    if local.isascii():
        return local.lower()
    if rules.smtputf8:
        return local.casefold()
    return local.translate(_ASCII_LOWER)


def normalize_address(address: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The form addresses are compared in. "@domain" entries keep their leading "@"."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    local, domain = split_address(a)
    local = unquote_local(fold_local(local, rules))
    if "@" not in a:
        return local
    return f"{local}@{normalize_domain(domain)}"


# -- what Postfix's resolver makes of a sender (trivial-rewrite resolve.c, rewrite.c) ------------

# What makes quote_822_local quote a local part: a leading, trailing or double dot, a space, a
# control character or an RFC 822 special (8-bit data is left alone).
_NEEDS_QUOTING: Final = re.compile(r'^\.|\.$|\.\.|[()<>@,;:\\"\[\] \x00-\x1f\x7f]')


def needs_quoting(local: str) -> bool:
    """Whether Postfix's quote_822_local would quote this (internal form) local part: it is
    not a dot-string (empty, a leading, trailing or double dot, a space, a control character
    or an RFC 822 special)."""
    return not local or _NEEDS_QUOTING.search(local) is not None


def strip_source_route(address: str) -> str:
    """ "@relay1,@relay2:user@domain" -> "user@domain" (RFC 5321 4.1.2 source routes are
    ignored; smtpd and rewrite_tree drop them)."""
    if address.startswith("@"):
        route, colon, rest = address.partition(":")
        if colon and rest:
            return rest
    return address


def envelope_sender(text: str) -> str:
    """The sender as smtpd passes it to a policy service, from a MAIL FROM argument as a
    client writes it: the angle brackets and a source route ("<@relay:user@d>") dropped, and
    quoted strings unquoted to Postfix's internal form ('"a b"@d' -> 'a b@d',
    '"al\\"x"@d' -> 'al"x@d'). ("<>" is the null sender "".)"""
    t = text.strip()
    if t.startswith("<") and t.endswith(">"):
        t = t[1:-1].strip()
    t = strip_source_route(t)
    out: list[str] = []
    escaped = False
    for ch in t:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch != '"':
            out.append(ch)
    return "".join(out)


def route_address(address: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The address (internal, unquoted form) that Postfix's trivial-rewrite resolves `address`
    to, which is what smtpd's sender-login checks look up (resolve.c resolve_addr):

    * a source route is dropped;
    * while the domain is one of `rules.mydestination`, it is stripped and the local part's
      routing forms are followed;
    * an address without "@" (as given, or left after stripping): "site!user" becomes
      "user@site" at the first "!" (swap_bangpath), else "user%domain" becomes "user@domain"
      at the last "%" (allow_percent_hack) -- rewrite_tree;
    * a local part that Postfix quotes (quote_822_local: a space, an RFC 822 special, a
      leading, trailing or double dot) is one quoted string there, opened as resolve_dequoted
      does: its last "@", else its last "%", routes; else its first "!".

    A stripped local domain comes back when no routing form is left. Without any domain the
    address is returned as it is (Postfix appends $myhostname; no key of ours has no "@").
    Each step removes one routing character or one domain, so the loop ends."""
    a = strip_source_route(address)
    if not rules.mydestination and "@" in a:
        return a  # (the common case: a domain, and none is ours to route in)
    local, at, dom = a.rpartition("@")
    domain: str | None = dom
    if not at:
        local, domain = dom, None
    quoted = needs_quoting(local)  # (quote_822_local quotes what precedes the last "@")
    saved = ""
    for _ in range(len(a) + 2):
        if domain is not None:
            if domain.endswith(".") and not domain.endswith("..") and len(domain) > 1:
                domain = domain[:-1]
            if not domain or normalize_domain(domain) not in rules.mydestination:
                return f"{local}@{domain}"
            saved, domain = domain, None
        if quoted:
            cut = local.rfind("@")
            if cut < 0 and rules.percent_hack:
                cut = local.rfind("%")
            if cut >= 0:
                local, domain = local[:cut], local[cut + 1 :]
                quoted = needs_quoting(local)
                continue
        elif rules.percent_hack and "%" in local and not (rules.swap_bangpath and "!" in local):
            local, _, domain = local.rpartition("%")
            continue
        if rules.swap_bangpath and "!" in local:
            domain, _, local = local.partition("!")
            quoted = False  # (Postfix scans the opened string into tokens again)
            continue
        break
    return f"{local}@{saved}" if saved else local


def sender_key(sender: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The most specific key of a sender (internal form, as a policy request gives it): the
    address Postfix resolves it to, normalised."""
    routed = route_address(sender, rules)
    local, at, domain = routed.rpartition("@")
    if not at:
        return unquote_local(fold_local(routed, rules))
    return f"{unquote_local(fold_local(local, rules))}@{normalize_domain(domain)}"


#: Local parts Postfix's split_addr never splits, whatever the delimiter (compared with the
#: key's folded case; "double-bounce" is Postfix's default double_bounce_sender).
_NEVER_SPLIT: Final = frozenset({"postmaster", "mailer-daemon", "double-bounce"})


def split_extension(local: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The local part without its extension, as Postfix's split_addr cuts it: at the first
    delimiter character; not at all when the local part starts with a delimiter, has none,
    is postmaster, mailer-daemon or double-bounce, or (with "-" a delimiter and
    owner_request_special) is "owner-…" or "…-request". "alice+tag" -> "alice"."""
    delims = rules.extension_delimiters
    if not delims:
        return local
    low = local.lower()
    if low in _NEVER_SPLIT:
        return local
    if "-" in delims and rules.owner_request_special:
        if low.startswith("owner-") or (len(low) > 8 and low.endswith("-request")):
            return local
    for i, ch in enumerate(local):
        if ch in delims:
            return local[:i] if i > 0 else local
    return local


def candidates(sender: str, rules: AddressRules = DEFAULT_RULES) -> tuple[str, ...]:
    """Keys under which a sender may be owned, most specific first: the address, the address
    without its extension, then "@domain" (as Postfix's sender_login_maps search them), of the
    address Postfix resolves the sender to (`route_address`)."""
    full = sender_key(sender, rules)
    local, domain = split_address(full)
    out = [full]
    if not domain:
        return tuple(out)
    bare = split_extension(local, rules)
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


def sender_domain(sender: str, rules: AddressRules = DEFAULT_RULES) -> str:
    """The domain of the address Postfix resolves the sender to, normalised."""
    return normalize_domain(split_address(route_address(sender.strip(), rules))[1])


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


def for_wider_keys(owned: frozenset[str]) -> frozenset[str]:
    """The addresses that may match a sender's extension-stripped or "@domain" key (all of
    them but the exact-only ones)."""
    exact = getattr(owned, "exact_only", None)
    return frozenset(owned - exact) if exact else owned
