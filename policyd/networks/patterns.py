"""One line of a range file: the pattern, the label and the fields, with the reason when bad.

This is the general parser: every form (CIDR, FIRST-LAST, IPv4 glob, single address, brackets,
exclusions) and every error message. The loader's fast path (loader.py) accepts only what this
parser accepts, and hands every other line to it.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Final

from policyd.addresses import normalize_domain

_AF4: Final = socket.AF_INET
_AF6: Final = socket.AF_INET6

MAX4: Final = (1 << 32) - 1
MAPPED_FIRST: Final = 0xFFFF << 32  # ::ffff:0.0.0.0
MAPPED_LAST: Final = MAPPED_FIRST | MAX4  # ::ffff:255.255.255.255

_KNOWN_FIELDS: Final = ("domains",)
_DOMAIN_RE: Final = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)
_LEADING_ZERO_RE: Final = re.compile(r"(?:^|[.:*-])0[0-9]")


class NetworksError(Exception):
    """A range file cannot be read or has an invalid line. The message is "file:line: why"."""


class Bad(Exception):
    """An invalid pattern or field; the text says why (the loader adds file and line)."""


@dataclass(frozen=True, slots=True)
class Range:
    """One range line of a range file."""

    label: str
    pattern: str  # as written (without the comment, the label and the fields)
    domains: frozenset[str] | None  # allowed sender domains; None = any sender domain
    source: str  # "file:line"


def _ntop_int(family: int, value: int) -> str:
    if family == 4:
        return socket.inet_ntop(_AF4, value.to_bytes(4, "big"))
    return socket.inet_ntop(_AF6, value.to_bytes(16, "big"))


def _dotted_leading_zero(text: str) -> bool:
    """True when an IPv4 (or IPv6-embedded IPv4) part of text has an octet like "010"."""
    tail = text.rpartition(":")[2]
    return "." in tail and _LEADING_ZERO_RE.search(tail) is not None


def _why_bad_address(text: str) -> str:
    if not text:
        return "empty address"
    if _dotted_leading_zero(text):
        return (
            f"leading zero in an IPv4 octet in {text!r} (ambiguous: Postfix reads it as octal;"
            " write the octet without leading zeros)"
        )
    if "%" in text:
        return f"zone index not allowed in {text!r}"
    if "[" in text or "]" in text:
        return f"misplaced bracket in {text!r} (write [2001:db8::]/32 or [2001:db8::1])"
    return f"invalid IP address {text!r}"


def parse_address(text: str) -> tuple[int, int]:
    """(family, integer) of an address, brackets allowed. Raises Bad."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        if ":" in text:
            return 6, int.from_bytes(socket.inet_pton(_AF6, text), "big")
        return 4, int.from_bytes(socket.inet_pton(_AF4, text), "big")
    except (OSError, ValueError):
        raise Bad(_why_bad_address(text)) from None


def _parse_cidr(pattern: str, address: str, plen: str) -> tuple[int, int, int]:
    bracketed = address.startswith("[") and address.endswith("]")
    family, value = parse_address(address)
    bits = 32 if family == 4 else 128
    if not (plen.isascii() and plen.isdigit() and len(plen) <= 3):
        if not plen:
            why = f"missing prefix length in {pattern!r}"
        elif "." in plen or ":" in plen:
            why = f"netmask notation is not supported in {pattern!r}: write a prefix length"
        else:
            why = f"prefix length {plen!r} is not a number in {pattern!r}"
        raise Bad(why)
    n = int(plen)
    if n > bits:
        raise Bad(f"prefix length /{n} is out of range for IPv{family} (0-{bits}) in {pattern!r}")
    hostmask = (1 << (bits - n)) - 1
    if value & hostmask:
        net = _ntop_int(family, value & ~hostmask)
        if bracketed:
            net = f"[{net}]"
        raise Bad(f"host bits set in {pattern} (did you mean {net}/{n}?)")
    return family, value, value | hostmask


def _valid_glob(pattern: str) -> bool:
    # netaddr is imported here, not at the top: globs are rare and the import is not free.
    from netaddr import AddrFormatError, valid_glob

    try:
        return bool(valid_glob(pattern))
    except (AddrFormatError, ValueError, TypeError, IndexError):
        return False


def _parse_glob(pattern: str) -> tuple[int, int, int]:
    from netaddr import AddrFormatError, IPGlob  # here, not at the top: see _valid_glob

    ok = _valid_glob(pattern)
    if _dotted_leading_zero(pattern):
        raise Bad(_why_bad_address(pattern))
    if not ok:
        raise Bad(
            f"invalid IPv4 glob {pattern!r} (examples: 192.0.2.*, 192.0.2-3.*, 192.0.2.10-20;"
            " IPv6 has no globs, use a CIDR or a range)"
        )
    try:
        glob = IPGlob(pattern)
    except (AddrFormatError, ValueError, TypeError, IndexError) as e:
        raise Bad(f"invalid IPv4 glob {pattern!r} ({e})") from None
    return 4, int(glob.first), int(glob.last)


def _parse_range(pattern: str) -> tuple[int, int, int]:
    if pattern.count("-") > 1:
        raise Bad(f"more than one '-' in range {pattern!r}")
    left, _, right = pattern.partition("-")
    try:
        f1, first = parse_address(left)
        f2, last = parse_address(right)
    except Bad as e:
        # Not two addresses: perhaps an IPv4 glob with a hyphenated octet (192.0.2.10-20).
        if ":" not in pattern and _valid_glob(pattern):
            return _parse_glob(pattern)
        raise Bad(f"invalid range {pattern!r}: {e}") from None
    if f1 != f2:
        raise Bad(f"range {pattern!r} mixes IPv4 and IPv6")
    if first > last:
        raise Bad(
            f"reversed range {pattern!r}: {left} is after {right} (did you mean {right}-{left}?)"
        )
    return f1, first, last


def parse_pattern(pattern: str) -> tuple[int, int, int]:
    """(family, first, last) of a pattern; IPv4-mapped IPv6 folded to IPv4. Raises Bad."""
    address, slash, plen = pattern.partition("/")
    if slash:
        family, first, last = _parse_cidr(pattern, address, plen)
    elif "*" in pattern:
        family, first, last = _parse_glob(pattern)
    elif "-" in pattern:
        family, first, last = _parse_range(pattern)
    else:
        family, first = parse_address(pattern)
        last = first
    if family == 6 and first >= MAPPED_FIRST and last <= MAPPED_LAST:
        return 4, first & MAX4, last & MAX4
    return family, first, last


def parse_domains(value: str) -> frozenset[str]:
    out: set[str] = set()
    for raw in value.split(","):
        if not raw.strip():
            raise Bad(f"empty domain in domains={value!r}")
        domain = normalize_domain(raw)
        if len(domain) > 253 or not _DOMAIN_RE.fullmatch(domain):
            raise Bad(f"invalid domain {raw!r} in domains=")
        out.add(domain)
    return frozenset(out)


def line_tokens(line: str) -> list[str]:
    """The words of a line without its comment (empty for a blank or comment line)."""
    if "#" in line:
        line = line[: line.index("#")]
    return line.split()


def parse_fields(
    pattern: str, tokens: list[str], cache: dict[str, frozenset[str]]
) -> tuple[str, frozenset[str] | None]:
    """(label, domains) from the tokens after the pattern; ``cache`` keeps one frozenset per
    distinct domains= value. Raises Bad."""
    label = pattern
    have_label = False
    domains: frozenset[str] | None = None
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if eq:
            if key not in _KNOWN_FIELDS:
                raise Bad(f"unknown field {key + '='!r} (known: domains=)")
            if domains is not None:
                raise Bad("domains= given twice")
            cached = cache.get(value)
            if cached is None:
                cached = parse_domains(value)
                cache[value] = cached
            domains = cached
        elif have_label:
            if label == "-":
                raise Bad("write a range without spaces around '-': FIRST-LAST")
            raise Bad(f"more than one label: {label!r} and {token!r}")
        else:
            label = token
            have_label = True
    if label == "-":
        raise Bad("write a range without spaces around '-': FIRST-LAST")
    return label, domains


def parse_exclusion(tokens: list[str]) -> tuple[int, int, int]:
    """(family, first, last) of an exclusion line ``!PATTERN`` (tokens[0] starts with "!")."""
    pattern = tokens[0][1:]
    if not pattern:
        raise Bad("'!' must be followed directly by a pattern (no space)")
    if len(tokens) > 1:
        raise Bad(f"an exclusion takes no label or fields: {' '.join(tokens[1:])!r}")
    return parse_pattern(pattern)
