r"""The request parser's fast paths: one whole request in one chunk, the usual case (Postfix
writes each request at once, and waits for the reply before the next). Pure: no I/O.
protocol.RequestParser takes them when nothing is buffered; each gives exactly what the
general path gives for the same bytes, or declines (None) and leaves it the general path:
tests/unit/policy/test_protocol.py compares them over random streams.

1. **By shape** (read_whole, first). Postfix sends every attribute of its list, always in the
   same order, so nearly every request has one of a few *shapes* (orders of names). A shape
   is learned from a request the find path read, and becomes one regular expression that
   matches exactly the requests of that shape whose values hold no control character:

       request=([ -~\x80-\U0010ffff]*+)\nprotocol_state=(...)\n ... \n\n

   A match proves what the general path checks line by line: the names, each once, in that
   order; every line with its "=" (a value may hold more: a name ends at the first); no CR,
   NUL or other control character; one empty line, at the end. One pass, in C.
2. **By finding the attributes** (_find_in_whole): for a request of unique names that no
   learned shape matches, each attribute a decision reads is found in the text ("\nname="),
   after one check over the framing bytes (_whole).

Both first need _short_whole: the request ends in the chunk and is shorter than any line or
size limit, so no limit can be met.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from policyd.core.limits import MAX_ATTRIBUTES, MAX_LINE_BYTES
from policyd.core.request import DECISION_ATTRIBUTES, Request

_LF: Final = 10


def read_whole(data: bytes) -> Request | None:
    """The Request of `data` if it is one whole request a fast path reads; else None."""
    if not _short_whole(data):
        return None
    text = data.decode("utf-8", "surrogateescape")
    for shape in _shapes:
        req = shape.read(text)
        if req is not None:
            return req
    lines = _whole(data)
    if not lines:
        return None
    req = _find_in_whole(text)
    if req is not None and learning():
        attrs = _split_whole(data, lines)
        if attrs is not None:
            learn(text, attrs)
    return req


def split_whole(data: bytes) -> dict[str, str] | None:
    """Every attribute of `data` if it is one whole request of unique names that the find
    path takes (for RequestParser.feed); else None."""
    lines = _whole(data) if _short_whole(data) else 0
    return _split_whole(data, lines) if lines else None


def _short_whole(data: bytes) -> bool:
    """Whether `data` ends with an empty line and is too short for any line or size limit."""
    n = len(data)
    return 2 <= n <= MAX_LINE_BYTES and data[n - 1] == _LF and data[n - 2] == _LF


# --------------------------------------------------------------------------------------------
# By shape

#: Shapes kept (Postfix sends one; a few Postfix versions or test clients add a few more).
MAX_SHAPES: Final = 8
#: Distinct name orders considered for learning; then learning stops for good, so a client
#: sending a new order each time costs a failed match per shape, never a compile.
MAX_CANDIDATES: Final = 64

# A value: any character but the C0 controls and DEL (LF, CR and NUL among them). A positive
# class, and possessive (*+: no backtracking; the class holds no LF, so it changes nothing
# else): the regular expression engine runs both faster (1.1 against 1.7 µs a request).
_VALUE: Final = "[ -~\x80-\U0010ffff]*+"
# A name a shape is learned from: printable ASCII without "=" (every Postfix name is).
_NAME: Final = re.compile("[!-<>-~]+")
# A control character other than LF: a request with one is not of any shape (see learn).
_CONTROL: Final = re.compile("[\x00-\x09\x0b-\x1f\x7f]")


class Shape:
    """One learned order of names: the pattern, and which of its groups holds each of the
    DECISION_ATTRIBUTES (those the shape lacks have an empty group at the end)."""

    __slots__ = ("pattern", "groups")

    def __init__(self, names: tuple[str, ...]) -> None:
        read = [n for n in names if n in DECISION_ATTRIBUTES]
        missing = [n for n in DECISION_ATTRIBUTES if n not in read]
        group = {n: i for i, n in enumerate(read + missing, 1)}
        lines = [
            f"{re.escape(n)}=({_VALUE})\n" if n in group else f"{re.escape(n)}={_VALUE}\n"
            for n in names
        ]
        self.pattern: Final = re.compile("".join(lines) + "\n" + "()" * len(missing))
        self.groups: Final = tuple(group[n] for n in DECISION_ATTRIBUTES)

    def read(self, text: str) -> Request | None:
        """The Request of `text` (one whole request, decoded), or None if it is not of this
        shape."""
        m = self.pattern.fullmatch(text)
        if m is None:
            return None
        v: tuple[str, ...] = m.group(*self.groups)
        # (positional: native field stores when compiled)
        return Request(
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], True
        )


_shapes: Final[list[Shape]] = []
_candidates: Final[set[tuple[str, ...]]] = set()


def learning() -> bool:
    """Whether learn() may still learn a shape."""
    return len(_shapes) < MAX_SHAPES and len(_candidates) < MAX_CANDIDATES


def learn(text: str, attrs: Mapping[str, str]) -> None:
    """Learn the shape of `text`, one whole request of unique names that the find path read
    (`attrs`: its names in order), if there is room. A request with a control character in
    a value is not of its own shape: it teaches nothing, and a later one of the same names
    may still."""
    names = tuple(attrs)
    if not learning() or names in _candidates or _CONTROL.search(text):
        return
    _candidates.add(names)
    if len(names) > MAX_ATTRIBUTES or not all(_NAME.fullmatch(n) for n in names):
        return
    shape = Shape(names)
    # (the shape reads its own request back as the find path did: a check, no more)
    if shape.read(text) == Request.from_attrs(attrs):
        _shapes.append(shape)


def forget() -> None:
    """Forget every learned shape (for tests)."""
    _shapes.clear()
    _candidates.clear()


# --------------------------------------------------------------------------------------------
# By finding the attributes

_CR: Final = 13
# bytes.translate's delete table: every byte but "=", LF, CR and NUL (the framing check)
_FRAMING_ONLY: Final = bytes(b for b in range(256) if b not in (0x3D, _LF, _CR, 0))
# the skeleton of a request of k lines that the find path takes, for the usual k
_SKELETONS: Final[tuple[bytes, ...]] = tuple(b"=\n" * k + b"\n" for k in range(64))


def _whole(data: bytes) -> int:
    """The line count if `data` is a _short_whole LF-only request, each line with one "="
    (the count is checked): the find path's case; else 0. Anything else takes the general
    path, which gives the same result or the error."""
    # Only the "=", LF, CR and NUL bytes: "=\n" once per line then the empty line's LF exactly
    # when every line has one "=", no line is empty before the last (so the request ends
    # there) and there is no CR or NUL (those take the general path).
    skeleton = data.translate(None, _FRAMING_ONLY)
    count = len(skeleton) >> 1
    if count > MAX_ATTRIBUTES:
        return 0
    expected = _SKELETONS[count] if count < len(_SKELETONS) else b"=\n" * count + b"\n"
    return count if skeleton == expected else 0


def _split_whole(data: bytes, lines: int) -> dict[str, str] | None:
    """Every attribute of a _whole request (`lines` long); None for a repeated or empty name."""
    # "name=value\nname=value" -> [name, value, name, value]
    it = iter(data[:-2].decode("utf-8", "surrogateescape").replace("\n", "=").split("="))
    attrs = dict(zip(it, it, strict=True))
    if "" in attrs or len(attrs) != lines:
        return None
    return attrs


def _find_in_whole(decoded: str) -> Request | None:
    """The Request of a _whole request (decoded), each attribute found in the text rather
    than every line split (most of a request is not read); None when a name is empty
    (refused by the general path). A line starts after an LF, so "\nname=" is the start of
    that attribute's first line: the first of a repeated name wins, as in the general path."""
    text = "\n" + decoded
    if text.find("\n=") >= 0:
        return None
    return Request(
        request=_value(text, "\nrequest="),
        protocol_state=_value(text, "\nprotocol_state="),
        client_address=_value(text, "\nclient_address="),
        sasl_username=_value(text, "\nsasl_username="),
        sender=_value(text, "\nsender="),
        recipient=_value(text, "\nrecipient="),
        queue_id=_value(text, "\nqueue_id="),
        instance=_value(text, "\ninstance="),
        server_port=_value(text, "\nserver_port="),
        policy_context=_value(text, "\npolicy_context="),
        recipient_count=_value(text, "\nrecipient_count="),
        size=_value(text, "\nsize="),
    )


def _value(text: str, key: str) -> str:
    """The value on the first line that starts with `key` ("\nname="), or ""."""
    at = text.find(key)
    if at < 0:
        return ""
    at += len(key)
    return text[at : text.find("\n", at)]
