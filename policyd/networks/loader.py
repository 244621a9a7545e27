"""Read range files into sweep keys (one int per line), then compile them (sweep.py).

Fast path: a line that is exactly a CIDR, an address or a FIRST-LAST range (``192.0.2.0/24``,
``2001:db8::/32``, ``192.0.2.1``, ``192.0.2.10-192.0.2.20``: no label, no field, no comment, no
space) is parsed inline with ``inet_pton`` and int arithmetic into one int (a range: and its
last address); no object per line is created or kept. Every other line, and every
line the fast path does not accept, goes through the general parser (patterns.py), which
accepts the same plain lines and says what is wrong with the rest: the fast path only ever
accepts less. Labels, fields and :class:`Range` objects are not built at load time: the lines
are kept (as the list of str the file was split into) and a Range is built from its line when a
lookup returns it (see table.py).
"""

from __future__ import annotations

import gc
import socket
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Final

from policyd.networks.patterns import (
    Bad,
    NetworksError,
    Range,
    line_tokens,
    parse_exclusion,
    parse_fields,
    parse_pattern,
)
from policyd.networks.sweep import EXCLUDED, FIRST_SHIFT, MAX_LINES, OTHER, sweep

_AF4: Final = socket.AF_INET
_AF6: Final = socket.AF_INET6

# A 32-bit unsigned array type ("I" is 4 bytes on every platform CPython runs on; "L" is the
# fallback).
ARRAY4: Final = "I" if array("I").itemsize >= 4 else "L"

# Prefix-length text -> int: only canonical decimal (anything else takes the general path,
# which validates it the same way and explains what is wrong). Host masks by prefix length.
_PLEN4: Final = {str(n): n for n in range(33)}
_PLEN6: Final = {str(n): n for n in range(129)}
HOSTMASK4: Final = [(1 << (32 - n)) - 1 for n in range(33)]
HOSTMASK6: Final = [(1 << (128 - n)) - 1 for n in range(129)]

#: Ranges with more addresses than an IPv4 /8 or an IPv6 /16 are reported by Networks.wide.
_WIDE4: Final = 1 << 24
_WIDE6: Final = 1 << 112


class RangeLines:
    """The lines of the loaded files by line number over all files (the first file's first line
    is 1), so that a Range is built only when it is asked for.

    Per file, one str holding all its lines joined by LF and the running sum of the line
    lengths (an array): 1M lines as a list of str would cost ~80 bytes each, this ~20.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.bases: list[int] = []  # per file: the number of the line before its first
        self.texts: list[str] = []
        self.sums: list[array[int]] = []  # per file: sums[k] = total length of lines 1..k
        self.domains: dict[str, frozenset[str]] = {}  # one frozenset per distinct domains=

    def add(self, name: str, lines: list[str]) -> int:
        """Keep a file's lines; returns the number of the line before its first."""
        base = self.bases[-1] + len(self.sums[-1]) - 1 if self.bases else 0
        if base + len(lines) > MAX_LINES:
            raise NetworksError(f"{name}: more than {MAX_LINES} lines in all range files")
        self.names.append(name)
        self.bases.append(base)
        self.texts.append("\n".join(lines))
        self.sums.append(array("Q", accumulate(map(len, lines), initial=0)))
        return base

    def line(self, number: int) -> tuple[str, str]:
        """(the text, "file:line") of the line with this number."""
        i = bisect_right(self.bases, number - 1) - 1
        k = number - self.bases[i] - 1  # 0-based in its file
        sums = self.sums[i]
        start = sums[k] + k  # + k: the LF after each earlier line
        return self.texts[i][start : start + sums[k + 1] - sums[k]], f"{self.names[i]}:{k + 1}"

    def range_at(self, number: int) -> Range:
        """The Range of the (valid, non-exclusion) line with this number."""
        text, source = self.line(number)
        tokens = line_tokens(text)
        pattern = tokens[0]
        label, domains = parse_fields(pattern, tokens, self.domains)  # validated at load
        return Range(label, pattern, domains, source)


@dataclass(frozen=True, slots=True)
class Built:
    """The compiled tables: per family sorted disjoint intervals and the line of the winning
    range of each (IPv4 in arrays; IPv6 starts/ends as ints, table.py splits them)."""

    starts4: array[int]
    ends4: array[int]
    winners4: array[int]
    starts6: list[int]
    ends6: list[int]
    winners6: array[int]
    wide: list[int]  # lines of wide ranges: IPv4 then IPv6, each in line order
    lines: RangeLines
    count4: int
    count6: int
    exclusions: int
    restricted: int


class Builder:
    """Collects the lines of one or more files, then compiles the lookup tables."""

    def __init__(self) -> None:
        self.keys4: list[int] = []
        self.keys6: list[int] = []
        # Last address of the lines whose key does not give it (not a CIDR; exclusions).
        self.others4: dict[int, int] = {}
        self.others6: dict[int, int] = {}
        self.exclusions4 = 0
        self.exclusions6 = 0
        self.restricted = 0
        self.general = 0  # lines that went through the general parser (tests, diagnostics)
        self.lines = RangeLines()

    def feed(self, lines: list[str], source: str) -> None:
        """Parse the lines of one file (``source`` names it in errors and in Range.source)."""
        base = self.lines.add(source, lines)
        # Local names for what the loop uses: faster than attribute and global lookups.
        add4 = self.keys4.append
        add6 = self.keys6.append
        pton = socket.inet_pton
        from_bytes = int.from_bytes
        plen4 = _PLEN4
        plen6 = _PLEN6
        mask4 = HOSTMASK4
        mask6 = HOSTMASK6
        number = base
        for text in lines:
            number += 1
            address, slash, plen = text.partition("/")
            try:
                if ":" in address:
                    first = from_bytes(pton(_AF6, address), "big")
                    n = plen6[plen] if slash else 128
                    # Host bits set, or perhaps IPv4-mapped: the general path decides.
                    if not (first & mask6[n] or first >> 32 == 0xFFFF):
                        add6(first << FIRST_SHIFT | n << 32 | number)
                        continue
                else:
                    first = from_bytes(pton(_AF4, address), "big")
                    n = plen4[plen] if slash else 32
                    if not first & mask4[n]:
                        add4(first << FIRST_SHIFT | n << 32 | number)
                        continue
            except (OSError, ValueError, KeyError):
                pass
            if not self._plain_range(text, number):
                self._general(text, number, number - base, source)

    def _plain_range(self, text: str, number: int) -> bool:
        """The fast path for a line that is exactly FIRST-LAST (two plain addresses of one
        family, in order, not IPv4-mapped). False: the general parser must decide."""
        left, dash, right = text.partition("-")
        if not dash:
            return False
        try:
            if ":" in text:
                first = int.from_bytes(socket.inet_pton(_AF6, left), "big")
                last = int.from_bytes(socket.inet_pton(_AF6, right), "big")
                keys, others = self.keys6, self.others6
            else:
                first = int.from_bytes(socket.inet_pton(_AF4, left), "big")
                last = int.from_bytes(socket.inet_pton(_AF4, right), "big")
                keys, others = self.keys4, self.others4
        except (OSError, ValueError):
            return False
        if first > last or (keys is self.keys6 and first >> 32 == 0xFFFF):
            return False
        keys.append(first << FIRST_SHIFT | OTHER << 32 | number)
        others[number] = last
        return True

    def _general(self, text: str, number: int, lineno: int, source: str) -> None:
        """Any line: every form, every error (raised as "source:lineno: why")."""
        self.general += 1
        tokens = line_tokens(text)
        if not tokens:
            return
        try:
            if tokens[0][:1] == "!":
                family, first, last = parse_exclusion(tokens)
                code = EXCLUDED
            else:
                family, first, last = parse_pattern(tokens[0])
                domains = parse_fields(tokens[0], tokens, self.lines.domains)[1]
                if domains is not None:
                    self.restricted += 1
                code = _prefix_code(family, first, last)
        except Bad as e:
            raise NetworksError(f"{source}:{lineno}: {e}") from None
        key = first << FIRST_SHIFT | code << 32 | number
        if family == 4:
            self.keys4.append(key)
            if code >= EXCLUDED:
                self.others4[number] = last
            self.exclusions4 += code == EXCLUDED
        else:
            self.keys6.append(key)
            if code >= EXCLUDED:
                self.others6[number] = last
            self.exclusions6 += code == EXCLUDED

    def build(self) -> Built:
        keys4 = self.keys4
        keys6 = self.keys6
        keys4.sort()
        keys6.sort()
        starts4: array[int] = array(ARRAY4)
        ends4: array[int] = array(ARRAY4)
        winners4: array[int] = array(ARRAY4)
        wide4: list[int] = []
        sweep(keys4, HOSTMASK4, self.others4, _WIDE4, starts4, ends4, winners4, wide4)
        starts6: list[int] = []
        ends6: list[int] = []
        winners6: array[int] = array(ARRAY4)
        wide6: list[int] = []
        sweep(keys6, HOSTMASK6, self.others6, _WIDE6, starts6, ends6, winners6, wide6)
        built = Built(
            starts4,
            ends4,
            winners4,
            starts6,
            ends6,
            winners6,
            sorted(wide4) + sorted(wide6),
            self.lines,
            len(keys4) - self.exclusions4,
            len(keys6) - self.exclusions6,
            self.exclusions4 + self.exclusions6,
            self.restricted,
        )
        self.keys4 = []
        self.keys6 = []
        self.others4 = {}
        self.others6 = {}
        return built


def _prefix_code(family: int, first: int, last: int) -> int:
    """The prefix length when first-last is a CIDR block (the key then holds the last address
    too), else OTHER."""
    size = last - first + 1
    if size & (size - 1) or first & (size - 1):
        return OTHER
    return (32 if family == 4 else 128) + 1 - size.bit_length()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Loading allocates many objects that stay alive for a while; the cyclic GC would scan
    the growing heap again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_lines(path: Path | str) -> list[str]:
    """The lines of a range file (UTF-8, BOM allowed), split at LF only so line numbers match
    editors; a CR before the LF is whitespace to the parser."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise NetworksError(f"{name}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")  # not "utf-8-sig": then e.start would not count the BOM
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise NetworksError(
            f"{name}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})"
        ) from None
    if text[:1] == "\ufeff":
        text = text[1:]
    return text.split("\n")
