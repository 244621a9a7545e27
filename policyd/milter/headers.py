"""Parsing the author headers (From:, Sender:, Resent-From:, Resent-Sender:) into the
mailboxes the milter checks, and the addresses their display names and comments show.

Pure: the standard library's `email` parsers, policyd.milter.header_display and policyd.addresses,
no pymilter, no I/O.

    From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>, Team: bob@bücher.example;
    -> ("joerg@example.org", "bob@xn--bcher-kva.example")
    From: "ceo@example.org" <alice@example.org>
    -> mailbox alice@example.org, display address ceo@example.org

The parser is email.headerregistry (through email.policy.default), which decodes encoded words,
skips comments and display names, flattens groups. It is lenient: on malformed input it records
"defects" and may silently drop text, e.g. `Alice <alice@example.org> ceo@example.org` parses
as alice alone, while a mail client may well show ceo. So a header with a syntax defect is only
accepted when email.utils.getaddresses, a second, independent parser, finds the very same
addresses; otherwise the header is "invalid" (the milter rejects it for logged-in users). When
headerregistry itself raises (it has crash bugs on some garbage), getaddresses is the fallback,
with every address it finds checked strictly. A third reading, the strict lexer in
policyd.milter.header_display, must find the same mailboxes too (it refuses e.g. the
CVE-2023-27043 forms `alice@example.org(<ceo@example.org>` that headerregistry reads as alice);
it also tells the display text (display names, group names, comments) from the addr-specs, and
every `local@domain` in that text, once decoded as a client would, is a display address.

Nothing here raises on any input: the results say what is wrong instead.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import errors as email_errors
from email.policy import default as default_policy
from email.utils import getaddresses

from policyd.addresses import DEFAULT_RULES, AddressRules, normalize_address
from policyd.milter.header_display import AddressListError, address_like, scan

#: Longest From:/Sender: value parsed. Real ones are a few hundred characters even with long
#: encoded display names. headerregistry's parser is superlinear (2,000 '"' took 0.3 s, 4,000
#: took 0.9 s), and Postfix allows 100 KiB headers, so a longer value is simply invalid.
MAX_HEADER_CHARS = 2048
#: Most mailboxes checked per message (From: plus Sender:). Each may cost a directory lookup.
MAX_MAILBOXES = 50
#: Most distinct address-like texts in one header's display names and comments.
MAX_DISPLAY_ADDRESSES = 50
#: Most Resent-From: headers (one per resent block, RFC 5322 3.6.6) before the message is invalid.
MAX_RESENT_BLOCKS = 10
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


#: The author headers read, lower-cased, and how each is reported.
AUTHOR_HEADERS = {
    "from": "From",
    "sender": "Sender",
    "resent-from": "Resent-From",
    "resent-sender": "Resent-Sender",
}

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class AuthorCheck:
    """The result of `author_mailboxes`.

    `mailboxes` are the normalised addresses of From:, Sender:, then the Resent-From: and
    Resent-Sender: headers in message order (no duplicates), or None when the headers are
    missing or invalid; `problem` then says why (for the log). `from_value` is the raw From:
    value (unfolded), for the log.

    `sources` pairs every mailbox with the header it came from ("From", "Sender",
    "Resent-From", "Resent-Sender"), so a mailbox in Sender: is reported as Sender:; a mailbox
    in two headers appears once per header. `display_addresses` pairs every address-like text
    (`local@domain`, normalised like a mailbox) found in a display name, a group name or a
    comment with its header; it includes texts equal to the mailbox itself
    (`"alice@example.org" <alice@example.org>`): which of them are allowed is the engine's
    decision. Both are empty when `mailboxes` is None.
    """

    mailboxes: tuple[str, ...] | None
    problem: str = ""
    from_value: str = ""
    sources: Pairs = ()
    display_addresses: Pairs = ()

    @property
    def ok(self) -> bool:
        return self.mailboxes is not None


def unfold(value: str) -> str:
    """Undo header folding; also drops the white space libmilter may leave at the ends."""
    return _FOLD.sub("", value).strip(" \t\r\n")


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    """One address-list value: its mailboxes (normalised, no duplicates, in order) and the
    address-like texts of its display names, group names and comments (normalised the same
    way, no duplicates, in order; they may repeat a mailbox)."""

    mailboxes: tuple[str, ...]
    display_addresses: tuple[str, ...] = ()


def parse_mailboxes(value: str, rules: AddressRules = DEFAULT_RULES) -> tuple[str, ...]:
    """The normalised mailboxes of an address-list header value (From:, Sender:).

    Raises HeaderError (and nothing else) when the value holds no mailbox or cannot be parsed
    unambiguously.
    """
    return parse_header(value, rules).mailboxes


def parse_header(value: str, rules: AddressRules = DEFAULT_RULES) -> ParsedHeader:
    """parse_mailboxes, plus the addresses shown in display names and comments.

    Three independent readings must agree on the mailboxes: email.headerregistry,
    email.utils.getaddresses when the first reports syntax defects, and the strict lexer of
    header_display, which also says which text is display text and which the addr-spec.
    Raises HeaderError (and nothing else).
    """
    try:
        return _parse(value, rules)
    except HeaderError:
        raise
    except Exception as e:  # noqa: BLE001 - defensive: any parser crash means "invalid"
        raise HeaderError(f"unparseable ({type(e).__name__})") from None


def _parse(value: str, rules: AddressRules) -> ParsedHeader:
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
    boxes = _registry_and_fallback(text, rules)
    try:
        lexed = scan(text)
    except AddressListError as e:
        raise HeaderError(str(e)) from None
    if sorted(set(_checked(map(_split, lexed.addr_specs), rules))) != sorted(set(boxes)):
        raise HeaderError("ambiguous (the parsers disagree on the mailboxes)")
    shown: list[str] = []
    for found in address_like(lexed.display_texts):
        addr = normalize_address(found, rules)
        if addr not in shown:
            shown.append(addr)
    if len(shown) > MAX_DISPLAY_ADDRESSES:
        raise HeaderError(f"more than {MAX_DISPLAY_ADDRESSES} addresses in display names")
    return ParsedHeader(boxes, tuple(shown))


def _registry_and_fallback(text: str, rules: AddressRules) -> tuple[str, ...]:
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
            # A quoted local part ("john doe"@x) may hold spaces; it stays quoted unless the
            # quotes are not needed (normalize_address: "alice"@x is alice@x, RFC 5321 4.1.2).
            inner = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            if not inner or "<" in inner or ">" in inner:
                raise HeaderError(f"{inner!r} is not a valid local part")
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
    """C0 (but tab), DEL, C1 and the Unicode line/paragraph separators: NEL (U+0085) and
    U+2028/U+2029 are line breaks to some clients, so they are refused like CR and LF."""
    o = ord(ch)
    return (o < 32 and ch != "\t") or 127 <= o <= 159 or o in (0x2028, 0x2029)


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
    """Check a message's author headers: From:, Sender:, Resent-From:, Resent-Sender:; other
    headers are ignored. Never raises.

    Exactly one From: with at least one mailbox; at most one Sender: with exactly one mailbox
    (RFC 5322 3.6.2). Resent blocks (3.6.6, what a client's "redirect" prepends): every
    Resent-From: (at least one mailbox each) and every Resent-Sender: (exactly one mailbox
    each, and no more of them than Resent-From:s, as each belongs to a block) is checked like
    From:/Sender:, in every block, not just the newest: an older block is as easy to forge as
    the newest one and a client that shows resent information may show any of them. From:
    stays checked too, as clients show From: as the author; so redirecting another person's
    message is refused unless the engine decides otherwise from `sources`.
    """
    values: dict[str, list[str]] = {key: [] for key in AUTHOR_HEADERS}
    order: list[tuple[str, str]] = []
    for name, value in headers:
        key = name.strip().lower()
        if key in values:
            values[key].append(value)
            order.append((key, value))
    froms, senders = values["from"], values["sender"]
    from_value = unfold(froms[0]) if froms else ""
    resent_from, resent_sender = len(values["resent-from"]), len(values["resent-sender"])
    if not froms:
        return AuthorCheck(None, "no From: header")
    if len(froms) > 1:
        return AuthorCheck(None, f"{len(froms)} From: headers", from_value)
    if len(senders) > 1:
        return AuthorCheck(None, f"{len(senders)} Sender: headers", from_value)
    if resent_from > MAX_RESENT_BLOCKS:
        return AuthorCheck(None, f"more than {MAX_RESENT_BLOCKS} Resent-From: headers", from_value)
    if resent_sender > resent_from:
        problem = f"{resent_sender} Resent-Sender: but {resent_from} Resent-From: headers"
        return AuthorCheck(None, problem, from_value)
    # From: first, then Sender:, then the resent headers in message order.
    order.sort(key=lambda kv: {"from": 0, "sender": 1}.get(kv[0], 2))
    boxes: list[str] = []
    sources: list[tuple[str, str]] = []
    shown: list[tuple[str, str]] = []
    for key, value in order:
        header = AUTHOR_HEADERS[key]
        try:
            parsed = parse_header(value, rules)
        except HeaderError as e:
            return AuthorCheck(None, f"{header}: {e}", from_value)
        if key in ("sender", "resent-sender") and len(parsed.mailboxes) != 1:
            return AuthorCheck(None, f"{header}: must be a single mailbox", from_value)
        for box in parsed.mailboxes:
            if box not in boxes:
                boxes.append(box)
            if (header, box) not in sources:
                sources.append((header, box))
        for addr in parsed.display_addresses:
            if (header, addr) not in shown:
                shown.append((header, addr))
    if len(boxes) > MAX_MAILBOXES:
        return AuthorCheck(None, f"more than {MAX_MAILBOXES} mailboxes", from_value)
    return AuthorCheck(tuple(boxes), "", from_value, tuple(sources), tuple(shown))


#: Author headers of at most this many characters in all are remembered with their check: a
#: user's next message has the same From: (issue 29: the three parsers cost ~120 us a message,
#: a remembered one ~1 us). Larger ones are checked each time; at most MEMO_SIZE are kept.
MEMO_MAX_CHARS = 1000
MEMO_SIZE = 2048


@functools.lru_cache(maxsize=MEMO_SIZE)
def _author_memo(headers: tuple[tuple[str, str], ...], rules: AddressRules) -> AuthorCheck:
    return author_mailboxes(headers, rules)


def author_check(
    headers: Sequence[tuple[str, str]], rules: AddressRules = DEFAULT_RULES
) -> AuthorCheck:
    """`author_mailboxes` (a pure function of its arguments), remembered for small headers."""
    if sum(len(k) + len(v) for k, v in headers) <= MEMO_MAX_CHARS:
        return _author_memo(tuple(headers), rules)
    return author_mailboxes(headers, rules)
