"""Postfix policy delegation wire protocol: a sans-IO codec (no sockets, no asyncio).

Requests are ``name=value`` lines ending in LF, closed by one empty line. Postfix writes LF
only; a stray CR right before an LF is accepted and stripped. Values are not escaped and may
contain ``=`` (we split at the first one). Bytes are decoded as UTF-8 with
``errors="surrogateescape"``, so non-UTF-8 input never raises and is kept in a form that
cannot equal any valid string. A NUL byte anywhere in a request is a protocol error.

Limits (policyd.core.limits) bound memory per connection:

- ``MAX_LINE_BYTES``: bytes of one line before its LF (a CR before the LF counts). Checked while
  the LF is still missing, so a peer streaming without LF is stopped after that many bytes of
  the line, whatever the chunking.
- ``MAX_REQUEST_BYTES``: every byte from the end of the previous request (or the start of the
  stream) up to and including this request's terminating empty line. That includes empty lines
  before the first attribute, which are skipped (they do not make an empty request) but
  counted, so an endless stream of empty lines fails instead of spinning forever.
- ``MAX_ATTRIBUTES``: attribute lines per request (repeated names count each time).

After a ``ProtocolError`` the parser is dead: the connection should be closed without a reply
(Postfix then retries), and every later ``feed`` raises the same error again. Requests
completed earlier in the same ``feed`` call as the error are discarded with it; Postfix never
sends a second request before it has read the reply to the first, so nothing real is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Final

from policyd.core.limits import MAX_ATTRIBUTES, MAX_LINE_BYTES, MAX_REQUEST_BYTES
from policyd.core.request import Request
from policyd.policy import fastpath

__all__ = [
    "LineTooLong",
    "MalformedRequest",
    "PolicyRequest",
    "ProtocolError",
    "RequestParser",
    "RequestTooLarge",
    "encode_request",
]


# --------------------------------------------------------------------------------------------
# Errors


class ProtocolError(Exception):
    """The peer broke the protocol. ``reason`` is a short stable code for logs and metrics."""

    #: The reason when the raiser gives none; each subclass sets its own.
    default_reason: ClassVar[str] = "protocol_error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        # Set on the instance, not read from the class body: a compiled (mypyc) class does
        # not see a subclass's class-level default for an instance attribute.
        self.reason: str = self.default_reason if reason is None else reason

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.reason

    def _clone(self) -> ProtocolError:
        return type(self)(str(self), self.reason)


class LineTooLong(ProtocolError):
    """A line (complete or still waiting for its LF) is longer than MAX_LINE_BYTES."""

    default_reason = "line_too_long"


class RequestTooLarge(ProtocolError):
    """Request over MAX_REQUEST_BYTES (reason ``request_too_large``) or over MAX_ATTRIBUTES
    attribute lines (reason ``too_many_attributes``)."""

    default_reason = "request_too_large"


class MalformedRequest(ProtocolError):
    """A line without ``=`` (``malformed_line``), an empty name (``empty_name``) or a NUL byte
    (``nul_byte``)."""

    default_reason = "malformed_line"


# --------------------------------------------------------------------------------------------
# Request


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One policy request. ``attrs`` holds every attribute, unknown ones included; for a
    repeated name the first value wins. ``get`` returns "" when absent (Postfix itself sends
    "" for unavailable values)."""

    attrs: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.attrs.get(name, default)


# --------------------------------------------------------------------------------------------
# Parser

_LF: Final = 10
_CR: Final = 13


def _request_from(attrs: dict[str, str]) -> PolicyRequest:
    return PolicyRequest(MappingProxyType(attrs))


def _check_line_lengths(buf: bytes | bytearray, start: int, end: int) -> None:
    """Raise LineTooLong if any LF-separated line in buf[start:end] is over the limit."""
    for line in buf[start:end].split(b"\n"):
        if len(line) > MAX_LINE_BYTES:
            raise LineTooLong(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")


def _parse_block(block: bytes | bytearray) -> dict[str, str]:
    """Parse the attribute lines of one request (LF-separated, no terminating empty line)."""
    if block.find(b"\0") >= 0:  # (find, not `in`: see RequestParser._feed)
        raise MalformedRequest("NUL byte in request", "nul_byte")
    if block.find(b"\r") >= 0:
        # Strip one CR before each LF, and before the terminator (end of the block).
        block = block.replace(b"\r\n", b"\n")
        if block.endswith(b"\r"):
            block = block[:-1]
    return _parse_lines(block.decode("utf-8", "surrogateescape").split("\n"))


def _parse_lines(lines: list[str]) -> dict[str, str]:
    """Parse the decoded attribute lines of one request (CRs already stripped)."""
    if len(lines) > MAX_ATTRIBUTES:
        raise RequestTooLarge(
            f"request has {len(lines)} attributes, limit {MAX_ATTRIBUTES}",
            "too_many_attributes",
        )
    pairs = [line.split("=", 1) for line in lines]
    try:
        attrs: dict[str, str] = dict(pairs)
    except ValueError:
        for number, pair in enumerate(pairs, 1):
            if len(pair) != 2:
                raise MalformedRequest(
                    f"attribute line {number} has no '=': {lines[number - 1][:64]!r}",
                    "malformed_line",
                ) from None
        raise  # not reachable: dict() only fails on a pair of the wrong length
    if "" in attrs:
        raise MalformedRequest("attribute with an empty name", "empty_name")
    if len(attrs) != len(pairs):
        # A repeated name: dict() kept the last value, the first must win.
        attrs = {}
        for name, value in pairs:
            attrs.setdefault(name, value)
    return attrs


class RequestParser:
    """Incremental request parser. ``feed`` returns the requests completed by the new bytes;
    any chunking of a byte stream yields the same requests. ``feed_requests`` returns the same
    requests as request.Request (only the attributes a decision reads: the server's call);
    the checks are the same. A whole request in one chunk, the usual case, is read by one of
    policyd.policy.fastpath's paths when it can; the rest here, the general path."""

    __slots__ = ("_buf", "_lead", "_scan", "_error")

    def __init__(self) -> None:
        # Unconsumed bytes of the current request, starting at its first non-empty line.
        self._buf = bytearray()
        # Bytes of empty lines skipped before the current request (count toward its size).
        self._lead = 0
        # Offset in _buf of the first line not yet length-checked (just after the last LF);
        # the terminator search resumes just before it.
        self._scan = 0
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> bool:
        """True while part of a request is buffered (a close now is "mid-request")."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[PolicyRequest]:
        return [_request_from(attrs) for attrs in self.feed_attrs(data)]

    def feed_attrs(self, data: bytes) -> list[dict[str, str]]:
        """As feed, each request as a new dict of its attributes."""
        if self._error is not None:
            raise self._error._clone()
        try:
            if not self._buf and not self._lead:
                attrs = fastpath.split_whole(data)
                if attrs is not None:
                    return [attrs]
            return self._feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def feed_requests(self, data: bytes) -> list[Request]:
        """As feed, each request as a Request."""
        if self._error is not None:
            raise self._error._clone()
        try:
            if not self._buf and not self._lead:
                req = fastpath.read_whole(data)
                if req is not None:
                    return [req]
            return [Request.from_attrs(attrs) for attrs in self._feed(data)]
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: ProtocolError) -> None:
        self._error = exc
        self._buf = bytearray()
        self._lead = self._scan = 0

    def _feed(self, data: bytes) -> list[dict[str, str]]:
        """The general path: any bytes, any chunking."""
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        n = len(buf)
        pos = 0
        lead = self._lead
        scan = self._scan
        out: list[dict[str, str]] = []
        while pos < n:
            c = buf[pos]
            if c == _LF or c == _CR:
                # Empty lines before a request: skip them, but count them.
                while pos < n:
                    c = buf[pos]
                    if c == _LF:
                        step = 1
                    elif c == _CR and pos + 1 < n and buf[pos + 1] == _LF:
                        step = 2
                    else:
                        break
                    pos += step
                    lead += step
                    if lead > MAX_REQUEST_BYTES:
                        raise RequestTooLarge(
                            f"more than {MAX_REQUEST_BYTES} bytes of empty lines",
                            "request_too_large",
                        )
                if pos >= n:
                    break
                # A lone CR left at the end may still become an empty line: it stays buffered
                # as a partial request (no terminator can be found in one byte).
            # The request ends at the first empty line: "\n\n", or "\n\r\n" with a stray CR.
            start = pos + scan - 1 if scan else pos
            t = buf.find(b"\n\n", start)
            stop = n if t < 0 else t
            if buf.find(b"\r", start, stop) >= 0 and (
                (t2 := buf.find(b"\n\r\n", start, stop + 2)) >= 0
            ):
                t = t2
                end = t2 + 3
            elif t >= 0:
                end = t + 2
            else:
                break
            if t - pos > MAX_LINE_BYTES:
                _check_line_lengths(buf, pos, t)
            if lead + end - pos > MAX_REQUEST_BYTES:
                raise RequestTooLarge(
                    f"request of {lead + end - pos} bytes exceeds the "
                    f"{MAX_REQUEST_BYTES}-byte limit",
                    "request_too_large",
                )
            out.append(_parse_block(buf[pos:t]))
            pos = end
            lead = 0
            scan = 0

        if pos < n:
            # An incomplete request remains: check it now so memory stays bounded.
            first = pos + scan
            last_lf = buf.rfind(b"\n", first)
            if last_lf >= 0:
                if last_lf - first > MAX_LINE_BYTES:
                    _check_line_lengths(buf, first, last_lf)
                scan = last_lf + 1 - pos
            partial = n - pos - scan
            if partial > MAX_LINE_BYTES:
                raise LineTooLong(
                    f"line exceeds the {MAX_LINE_BYTES}-byte limit before its LF "
                    f"({partial} bytes buffered)"
                )
            if lead + n - pos > MAX_REQUEST_BYTES:
                raise RequestTooLarge(
                    f"request exceeds the {MAX_REQUEST_BYTES}-byte limit before its end "
                    f"({lead + n - pos} bytes buffered)",
                    "request_too_large",
                )
            if buf is self._buf:
                del self._buf[:pos]
            else:
                self._buf = bytearray(buf[pos:])
        elif self._buf:
            self._buf = bytearray()
        self._lead = lead
        self._scan = scan
        return out


# --------------------------------------------------------------------------------------------
# Encoders


# C0 controls, DEL and C1 controls: none of them belong in a reply line.
def encode_request(attrs: Mapping[str, str]) -> bytes:
    """Encode a request the way Postfix does (``name=value\\n``... then ``\\n``). For tests,
    benchmarks and the CLI. Strings from the parser (surrogate-escaped bytes) round-trip.

    Raises ValueError for an empty name, ``=`` in a name, or CR, LF or NUL anywhere.
    """
    parts: list[bytes] = []
    for name, value in attrs.items():
        if not name or "=" in name:
            raise ValueError(f"invalid attribute name {name!r}")
        for s in (name, value):
            if "\n" in s or "\r" in s or "\0" in s:
                raise ValueError(f"CR, LF or NUL in attribute {name!r}")
        parts.append(f"{name}={value}\n".encode("utf-8", "surrogateescape"))
    parts.append(b"\n")
    return b"".join(parts)
