"""A strict lexer for address-list header values, and the address-like text in display names.

Pure, no I/O. policyd.milter.headers uses it twice: as a third, independent reading of where each
mailbox's real addr-spec is (it must agree with the email parsers, or the header is ambiguous),
and to find every `local@domain` a mail client may show that is not that addr-spec:

    "ceo@example.org" <alice@example.org>           -> addr alice@…, display text ceo@…
    alice@example.org (ceo@example.org)             -> addr alice@…, comment ceo@…
    =?utf-8?B?PGNlb0BleGFtcGxlLm9yZz4=?= <alice@x>  -> display text decodes to <ceo@example.org>

The lexer follows RFC 5322 3.4 (mailbox, group, angle-addr with an obsolete route, quoted
strings, nested comments, quoted pairs) and refuses what a client could read in more than one
way: a ')' or '>' with nothing open, an unterminated quoted string, comment or group, two
<...> in one mailbox, text after the <...>, a backslash outside quotes and comments, white
space or an encoded word inside an address. Only an unterminated '<' at the very end is
accepted (a client shows the address it holds).

Display text is searched after undoing what a client undoes before it shows a name: quoted
pairs, RFC 2047 encoded words (anywhere, also inside quoted strings, as several clients do;
both the raw and the decoded text are searched), NFKC (fullwidth '＠' is '@'), invisible
format characters (zero-width space, bidi controls) dropped, and '"' dropped.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

#: Characters that end an atom outside quotes and comments.
_ATOM_END = frozenset(' \t()<>,;:"\\')
_ANGLE_END = frozenset(' \t()<>"\\')
# RFC 2047 encoded word (lenient: no length limit, charset may carry a *language).
_ENCODED = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?\s]*)\?=")
#: white space between two encoded words (RFC 2047 6.2): not before a mere "=?"
_ENCODED_GAP = re.compile(
    r"(=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=)[ \t]+(?==\?[^?\s]+\?[qQbB]\?[^?\s]*\?=)"
)
_ROUTE = re.compile(r"@[^@,:]+(?:,@[^@,:]+)*:")
#: What ends the local part or domain of an address-like text.
_DELIMITERS = frozenset(" \t\r\n<>()[],;:@\\")
#: Full stops that IDNA (RFC 3490) treats as '.' and NFKC does not map.
_DOTS = str.maketrans({"\u3002": ".", "\uff61": "."})


class AddressListError(ValueError):
    """The value is not an address list that reads only one way. str() says why."""


@dataclass(frozen=True, slots=True)
class Scan:
    """`addr_specs`: each mailbox's address as written (quoted local part kept; comments, white
    space and route removed), in order. `display_texts`: display names, group names and
    comments, quoted pairs resolved but encoded words not yet decoded."""

    addr_specs: tuple[str, ...]
    display_texts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word", "quoted", "comment", "angle", ",", ":", ";"
    text: str  # word: as written; quoted: content; comment: content; angle: the addr-spec
    raw: str = ""  # quoted: with its quotes and quoted pairs, as written
    space: bool = False  # white space before it
    comments: tuple[str, ...] = ()  # angle: comments inside it


def scan(text: str) -> Scan:
    """Lex an unfolded address-list value. Raises AddressListError."""
    addrs: list[str] = []
    display: list[str] = []
    current: list[_Token] = []
    in_group = closed = False
    for tok in _tokens(text):
        if tok.kind == ",":
            _finish(current, closed, addrs, display)
            current, closed = [], False
        elif tok.kind == ":":
            if in_group or closed:
                raise AddressListError("':' inside a group")
            if any(t.kind == "angle" for t in current):
                raise AddressListError("':' after <...>")
            _phrase(current, display)
            current, in_group = [], True
        elif tok.kind == ";":
            if not in_group:
                raise AddressListError("';' outside a group")
            _finish(current, closed, addrs, display)
            current, in_group, closed = [], False, True
        else:
            current.append(tok)
    if in_group:
        raise AddressListError("a group without its ';'")
    _finish(current, closed, addrs, display)
    return Scan(tuple(addrs), tuple(display))


def _finish(tokens: list[_Token], closed: bool, addrs: list[str], display: list[str]) -> None:
    """One mailbox (the tokens between two commas)."""
    angles = [i for i, t in enumerate(tokens) if t.kind == "angle"]
    if closed and any(t.kind != "comment" for t in tokens):
        raise AddressListError("text after a group's ';'")
    if len(angles) > 1:
        raise AddressListError("two <...> in one mailbox")
    if angles:
        i = angles[0]
        if any(t.kind != "comment" for t in tokens[i + 1 :]):
            raise AddressListError("text after <...>")
        _phrase(tokens[:i], display)
        display.extend(t.text for t in tokens[i + 1 :])
        display.extend(tokens[i].comments)
        addrs.append(tokens[i].text)
        return
    display.extend(t.text for t in tokens if t.kind == "comment")
    parts = [t for t in tokens if t.kind != "comment"]
    if parts:
        addrs.append(_join_addr(parts))


def _phrase(tokens: list[_Token], display: list[str]) -> None:
    """A display or group name: with and without its comments, and each comment alone."""
    if not tokens:
        return
    with_comments = without = ""
    for t in tokens:
        sep = " " if t.space else ""
        if t.kind == "word" and "@" in t.text:
            # RFC 5322: a phrase is atoms and quoted strings, and "@" is no atom. Python 3.13's
            # parsers read `a@x <a@x>` differently from 3.11's: refused on every Python.
            raise AddressListError("an unquoted '@' in a display name (quote the name)")
        if t.kind == "comment":
            with_comments += f"{sep}({t.text})"
            display.append(t.text)
            continue
        with_comments += sep + t.text
        without += sep + t.text
    display.append(with_comments.strip())
    if without.strip() != with_comments.strip():
        display.append(without.strip())


def _join_addr(parts: list[_Token]) -> str:
    """The words and quoted strings of an addr-spec; white space only around '.' and '@'
    (RFC 5322 4.4 obsolete syntax), anything else is two words a client may show apart."""
    out = ""
    for t in parts:
        piece = t.raw if t.kind == "quoted" else t.text
        if out and t.space and not (out[-1] in ".@" or piece[:1] in ".@"):
            raise AddressListError("white space inside an address")
        out += piece
    if _ENCODED.search(out):
        raise AddressListError("an encoded word inside an address")
    return out


def _skip_space(text: str, i: int) -> tuple[int, bool]:
    """The index of the first character at or after i that is not a space or tab, and whether
    any was skipped."""
    j = i
    while j < len(text) and text[j] in " \t":
        j += 1
    return j, j > i


def _tokens(text: str) -> Iterable[_Token]:
    i, n = 0, len(text)
    while i < n:
        i, space = _skip_space(text, i)
        if i >= n:
            return
        ch = text[i]
        if ch == '"':
            content, raw, i = _quoted(text, i)
            yield _Token("quoted", content, raw, space)
        elif ch == "(":
            content, i = _comment(text, i)
            yield _Token("comment", content, "", space)
        elif ch == "<":
            addr, comments, i = _angle(text, i)
            yield _Token("angle", addr, "", space, comments)
        elif ch in ",:;":
            yield _Token(ch, ch, "", space)
            i += 1
        elif ch == ")":
            raise AddressListError("')' without '('")
        elif ch == ">":
            raise AddressListError("'>' without '<'")
        elif ch == "\\":
            raise AddressListError("a backslash outside quotes and comments")
        else:
            start = i
            while i < n and text[i] not in _ATOM_END:
                i += 1
            yield _Token("word", text[start:i], "", space)


def _quoted(text: str, i: int) -> tuple[str, str, int]:
    """The quoted string at text[i] == '"': (content, as written, index after it)."""
    out: list[str] = []
    j = i + 1
    while j < len(text):
        ch = text[j]
        if ch == "\\" and j + 1 < len(text):
            out.append(text[j + 1])
            j += 2
        elif ch == '"':
            return "".join(out), text[i : j + 1], j + 1
        else:
            out.append(ch)
            j += 1
    raise AddressListError("an unterminated quoted string")


def _comment(text: str, i: int) -> tuple[str, int]:
    """The comment at text[i] == '(': (content with nested parentheses, index after it)."""
    out: list[str] = []
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\" and j + 1 < len(text):
            out.append(text[j + 1])
            j += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if not depth:
                return "".join(out[1:]), j + 1
        out.append(ch)
        j += 1
    raise AddressListError("an unterminated comment")


def _angle(text: str, i: int) -> tuple[str, tuple[str, ...], int]:
    """The angle-addr at text[i] == '<': (addr-spec without route, its comments, index after)."""
    parts: list[_Token] = []
    comments: list[str] = []
    j, n = i + 1, len(text)
    while True:
        j, space = _skip_space(text, j)
        ch = text[j] if j < n else ">"  # (the end of the value ends the angle-addr too)
        if ch == ">":
            j = min(j + 1, n)
            break
        if ch == '"':
            content, raw, j = _quoted(text, j)
            parts.append(_Token("quoted", content, raw, space))
        elif ch == "(":
            content, j = _comment(text, j)
            comments.append(content)
        elif ch in "<)\\":
            raise AddressListError(f"{ch!r} inside <...>")
        else:
            start = j
            while j < n and text[j] not in _ANGLE_END:
                j += 1
            parts.append(_Token("word", text[start:j], "", space))
    # (an unterminated '<' ends here at the end of the value: accepted, see the module text)
    addr = _join_addr(parts) if parts else ""
    route = _ROUTE.match(addr)
    if route:
        addr = addr[route.end() :]
    for ch in ":,":
        if not _in_quotes(addr, ch):
            raise AddressListError(f"{ch!r} inside <...> that is not a route")
    return addr, tuple(comments), j


def _in_quotes(addr: str, ch: str) -> bool:
    """True when every `ch` in addr is inside a quoted string."""
    quoted = escaped = False
    for c in addr:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = quoted
        elif c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return False
    return True


# -- address-like text --------------------------------------------------------------------------


def decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded wherever they are; white space between two is dropped.
    An encoded word that does not decode (unknown charset, bad base64) stays as written."""
    if "=?" not in text:
        return text
    return _ENCODED.sub(_decode_one, _ENCODED_GAP.sub(r"\1", text))


def _decode_one(m: re.Match[str]) -> str:
    charset = m.group(1).partition("*")[0]
    data = m.group(3)
    try:
        if m.group(2) in "bB":
            raw = base64.b64decode(data + "=" * (-len(data) % 4))
        else:
            raw = re.sub(
                rb"=([0-9A-Fa-f]{2})",
                lambda h: bytes([int(h.group(1), 16)]),
                data.replace("_", " ").encode("ascii", "replace"),
            )
        return raw.decode(charset, "replace")
    except (LookupError, ValueError, binascii.Error, TypeError):
        return m.group(0)


def clean(text: str) -> str:
    """What a client shows: NFKC, the IDNA full stops as '.', format characters (zero-width,
    bidi controls) and '"' dropped."""
    text = unicodedata.normalize("NFKC", text).translate(_DOTS)
    return "".join(ch for ch in text if ch != '"' and unicodedata.category(ch) != "Cf")


def address_like(texts: Iterable[str]) -> list[str]:
    """Every `local@domain` in the texts, raw and RFC 2047-decoded, as found (not normalised),
    in order, without duplicates. Each '@' with a non-empty run of non-delimiters on both
    sides counts; a domain may also be an address literal `[...]`."""
    found: list[str] = []
    for text in texts:
        for variant in dict.fromkeys((clean(text), clean(decode_words(text)))):
            for addr in _at_signs(variant):
                if addr not in found:
                    found.append(addr)
    return found


def _at_signs(text: str) -> Iterable[str]:
    start = 0
    while (at := text.find("@", start)) >= 0:
        start = at + 1
        left = at
        while left > 0 and text[left - 1] not in _DELIMITERS:
            left -= 1
        right = at + 1
        if right < len(text) and text[right] == "[":
            close = text.find("]", right)
            right = close + 1 if close > 0 else right
        else:
            while right < len(text) and text[right] not in _DELIMITERS:
                right += 1
        domain = text[at + 1 : right].rstrip(".")  # "ceo@example.org." ends a sentence
        if left < at and domain:
            yield f"{text[left:at]}@{domain}"
