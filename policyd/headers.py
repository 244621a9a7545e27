"""Parsing the author headers (From:, Sender:) into the mailboxes the milter checks.

Pure: the standard library's `email` parsers and policyd.addresses, no pymilter, no I/O.

    From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>, Team: bob@bücher.example;
    -> ("joerg@example.org", "bob@xn--bcher-kva.example")

The parser is email.headerregistry (through email.policy.default), which decodes encoded words,
skips comments and display names, flattens groups. It is lenient: on malformed input it records
"defects" and may silently drop text, e.g. `Alice <alice@example.org> ceo@example.org` parses
as alice alone, while a mail client may well show ceo. So a header with a syntax defect is only
accepted when email.utils.getaddresses, a second, independent parser, finds the very same
addresses; otherwise the header is "invalid" (the milter rejects it for logged-in users). When
headerregistry itself raises (it has crash bugs on some garbage), getaddresses is the fallback,
with every address it finds checked strictly.

Nothing here raises on any input: the results say what is wrong instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email import errors as email_errors
from email.policy import default as default_policy
from email.utils import getaddresses

from policyd.addresses import DEFAULT_RULES, AddressRules, normalize_address

#: Longest From:/Sender: value parsed. Real ones are a few hundred characters even with long
#: encoded display names. headerregistry's parser is superlinear (2,000 '"' took 0.3 s, 4,000
#: took 0.9 s), and Postfix allows 100 KiB headers, so a longer value is simply invalid.
MAX_HEADER_CHARS = 2048
#: Most mailboxes checked per message (From: plus Sender:). Each may cost a directory lookup.
MAX_MAILBOXES = 50
#: Cheap pre-checks that bound the parsers' work: quote/backslash/parenthesis characters (the
#: slow cases), comment nesting (getaddresses recurses per level) and commas.
MAX_SPECIALS = 200
MAX_COMMENT_DEPTH = 20

# RFC 5322 unfolding: a line break followed by white space is removed (the white space stays).
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# What a domain may contain once parsed: no white space, brackets only around a literal.
_BAD_DOMAIN = re.compile(r"[\s<>()\[\],;:\"\\]")
_BAD_LOCAL = re.compile(r"[\s<>\"\\(),;:\[\]@]")

# Defects that say nothing about the addresses: a non-ASCII local part (valid with SMTPUTF8)
# and 8-bit bytes that were not UTF-8 (checked separately: allowed outside the addresses).
_HARMLESS = (email_errors.NonASCIILocalPartDefect, email_errors.UndecodableBytesDefect)
# Syntax defects: accepted only when the second parser agrees on the addresses.
_SYNTAX = (email_errors.InvalidHeaderDefect, email_errors.ObsoleteHeaderDefect)


class HeaderError(ValueError):
    """A From:/Sender: value that yields no trustworthy list of mailboxes. str() says why."""


@dataclass(frozen=True, slots=True)
class AuthorCheck:
    """The result of `author_mailboxes`.

    `mailboxes` are the normalised addresses of From: then Sender: (no duplicates), or None when
    the headers are missing or invalid; `problem` then says why (for the log). `from_value` is
    the raw From: value (unfolded), for the log.
    """

    mailboxes: tuple[str, ...] | None
    problem: str = ""
    from_value: str = ""

    @property
    def ok(self) -> bool:
        return self.mailboxes is not None


def unfold(value: str) -> str:
    """Undo header folding; also drops the white space libmilter may leave at the ends."""
    return _FOLD.sub("", value).strip(" \t\r\n")


def parse_mailboxes(value: str, rules: AddressRules = DEFAULT_RULES) -> tuple[str, ...]:
    """The normalised mailboxes of an address-list header value (From:, Sender:).

    Raises HeaderError (and nothing else) when the value holds no mailbox or cannot be parsed
    unambiguously.
    """
    try:
        return _parse(value, rules)
    except HeaderError:
        raise
    except Exception as e:  # noqa: BLE001 - defensive: any parser crash means "invalid"
        raise HeaderError(f"unparseable ({type(e).__name__})") from None


def _parse(value: str, rules: AddressRules) -> tuple[str, ...]:
    text = unfold(value)
    if not text:
        raise HeaderError("empty")
    if len(text) > MAX_HEADER_CHARS:
        raise HeaderError(f"longer than {MAX_HEADER_CHARS} characters")
    if any(_is_control(ch) for ch in text):
        raise HeaderError("contains control characters")
    if sum(text.count(ch) for ch in '"\\()') > MAX_SPECIALS:
        raise HeaderError("too many quotes or comments")
    if _comment_depth(text) > MAX_COMMENT_DEPTH:
        raise HeaderError("comments nested too deeply")
    if text.count(",") > 2 * MAX_MAILBOXES:
        raise HeaderError(f"more than {MAX_MAILBOXES} mailboxes")
    try:
        parsed = default_policy.header_factory("From", text)
        found = [_split(a.addr_spec) for a in parsed.addresses]
        defects = list(parsed.defects)
    except Exception:  # noqa: BLE001 - headerregistry has crash bugs on garbage: fall back
        return _checked(_fallback(text), rules)
    serious = [d for d in defects if not isinstance(d, _HARMLESS)]
    if any(not isinstance(d, _SYNTAX) for d in serious):
        raise HeaderError(f"malformed ({_describe(serious)})")
    boxes = _checked(found, rules)
    if serious:
        # Lenient parse of a malformed header: trust it only if the second parser agrees.
        try:
            second = _checked(_fallback(text), rules)
        except HeaderError:
            second = ()
        if sorted(set(second)) != sorted(set(boxes)):
            raise HeaderError(f"ambiguous ({_describe(serious)})")
    return boxes


def _fallback(text: str) -> list[tuple[str, str]]:
    """email.utils.getaddresses, split into (local, domain); an unusable entry stays empty."""
    out: list[tuple[str, str]] = []
    entries = getaddresses([text])
    for _name, addr in entries:
        if not addr and len(entries) > 1:
            # getaddresses reports an empty group ("undisclosed-recipients:;") as ("", "")
            continue
        out.append(_split(addr))
    return out


def _split(addr_spec: str) -> tuple[str, str]:
    """ "local@domain" -> (local, domain), the local part still quoted if it was;
    no "@": (x, "")."""
    local, at, domain = addr_spec.rpartition("@")
    return (local, domain) if at else (addr_spec, "")


def _checked(found: Iterable[tuple[str, str]], rules: AddressRules) -> tuple[str, ...]:
    out: list[str] = []
    for local, domain in found:
        if local in ("", "<>") and not domain:
            raise HeaderError("an empty address")
        if not local or not domain:
            shown = f"{local}@{domain}" if domain else local
            raise HeaderError(f"{shown!r} is not a mailbox (local@domain)")
        if _has_surrogates(local) or _has_surrogates(domain):
            raise HeaderError("an address contains bytes that are not UTF-8")
        if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
            # A quoted local part ("john doe"@x) may hold spaces; compared without the quotes.
            local = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            if not local or "<" in local or ">" in local:
                raise HeaderError(f"{local!r} is not a valid local part")
        elif _BAD_LOCAL.search(local):
            raise HeaderError(f"{local!r} is not a valid local part")
        if _BAD_DOMAIN.search(domain.removeprefix("[").removesuffix("]")) or "@" in domain:
            raise HeaderError(f"{domain!r} is not a valid domain")
        box = normalize_address(f"{local}@{domain}", rules)
        if box not in out:
            out.append(box)
    if not out:
        raise HeaderError("no mailbox")
    if len(out) > MAX_MAILBOXES:
        raise HeaderError(f"more than {MAX_MAILBOXES} mailboxes")
    return tuple(out)


def _comment_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")" and depth:
            depth -= 1
    return deepest


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return (o < 32 and ch != "\t") or o == 127


def _has_surrogates(s: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in s)


def _describe(defects: list[email_errors.MessageDefect]) -> str:
    seen: list[str] = []
    for d in defects:
        text = str(d) or type(d).__name__
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)[:200]


def author_mailboxes(
    headers: Iterable[tuple[str, str]], rules: AddressRules = DEFAULT_RULES
) -> AuthorCheck:
    """Check a message's From: and Sender: headers; other headers are ignored.

    Exactly one From: with at least one mailbox; at most one Sender: with exactly one mailbox
    (RFC 5322 3.6.2). Never raises.
    """
    froms: list[str] = []
    senders: list[str] = []
    for name, value in headers:
        key = name.strip().lower()
        if key == "from":
            froms.append(value)
        elif key == "sender":
            senders.append(value)
    from_value = unfold(froms[0]) if froms else ""
    if not froms:
        return AuthorCheck(None, "no From: header")
    if len(froms) > 1:
        return AuthorCheck(None, f"{len(froms)} From: headers", from_value)
    if len(senders) > 1:
        return AuthorCheck(None, f"{len(senders)} Sender: headers", from_value)
    try:
        boxes = list(parse_mailboxes(froms[0], rules))
    except HeaderError as e:
        return AuthorCheck(None, f"From: {e}", from_value)
    if senders:
        try:
            sender = parse_mailboxes(senders[0], rules)
        except HeaderError as e:
            return AuthorCheck(None, f"Sender: {e}", from_value)
        if len(sender) != 1:
            return AuthorCheck(None, "Sender: must be a single mailbox", from_value)
        if sender[0] not in boxes:
            boxes.append(sender[0])
    if len(boxes) > MAX_MAILBOXES:
        return AuthorCheck(None, f"more than {MAX_MAILBOXES} mailboxes", from_value)
    return AuthorCheck(tuple(boxes), "", from_value)
