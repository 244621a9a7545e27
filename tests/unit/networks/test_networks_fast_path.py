"""The loader's fast path (plain CIDR and address lines parsed inline) against the general
parser and the stdlib, and the lazily built Range objects."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from policyd.networks import Networks, NetworksError, Range, loader, table

GENERAL_SUFFIX = "  # a comment sends the line to the general path"


def outcome(lines: list[str]) -> object:
    """Everything a caller can observe of the table built from lines, or the error text."""
    try:
        n = Networks.from_lines(lines, "r.txt")
    except NetworksError as e:
        return ("error", str(e))
    return (n._intervals(), len(n), n.exclusions, n.summary(), n.wide)


def general_lines(lines: list[str]) -> int:
    """How many of the lines the loader sent to the general parser."""
    builder = loader.Builder()
    with contextlib.suppress(NetworksError):  # some are invalid: the general parser says why
        builder.feed(lines, "r.txt")
    return builder.general


def test_plain_lines_take_the_fast_path_and_everything_else_the_general_one() -> None:
    plain = [
        "192.0.2.0/24",
        "2001:db8::/32",
        "192.0.2.1",
        "2001:db8::1",
        "0.0.0.0/0",
        "::/0",
        "198.51.100.1-198.51.100.9",
        "2001:db8::1-2001:db8::1:0",
        "198.51.100.1-198.51.100.1",
    ]
    assert general_lines(plain) == 0
    assert len(Networks.from_lines(plain)) == 9
    other = [
        "198.51.100.0/24 label",
        "198.51.100.0/24#c",
        "198.51.100.0/24\r",
        " 198.51.100.0/24",
        "198.51.100.0/024",
        "[2001:db8:1::]/48",
        "::ffff:198.51.100.0/120",
        "198.51.100.9-198.51.100.1",
        "::ffff:198.51.100.1-::ffff:198.51.100.9",
        "198.51.100.1-2001:db8::1",
        "198.51.100.10-20",
        "198.51.100.1-198.51.100.5-198.51.100.9",
        "198.51.100.1-198.51.100.9 label",
        "203.0.113.*",
        "!203.0.113.7",
        "",
        "# comment",
    ]
    for line in other:
        assert general_lines([line]) == 1, line


# --------------------------------------------------------------------------------------------
# Property: any lines give the same table (or the same error) through the fast path as through
# the general path


def _v4(draw: st.DrawFn) -> tuple[str, int]:
    value = draw(st.integers(0, (1 << 32) - 1))
    return str(ipaddress.IPv4Address(value)), 32


def _v6(draw: st.DrawFn) -> tuple[str, int]:
    value = draw(
        st.integers(0, (1 << 128) - 1)
        | st.integers(0xFFFF00000000, 0xFFFFFFFFFFFF)  # IPv4-mapped
        | st.integers(0, 0xFFFF)  # near ::
    )
    a = ipaddress.IPv6Address(value)
    text = draw(st.sampled_from([a.compressed, a.exploded, a.compressed.upper()]))
    return text, 128


@st.composite
def plain_lines(draw: st.DrawFn) -> str:
    """A CIDR or address line as the fast path sees it: mostly valid, host bits mostly clear,
    sometimes broken in one of the ways a fast path could get wrong."""
    address, bits = _v6(draw) if draw(st.booleans()) else _v4(draw)
    kind = draw(st.sampled_from(["cidr", "cidr", "cidr", "address", "broken"]))
    if kind == "address":
        return address
    plen = draw(st.integers(0, bits))
    if draw(st.integers(0, 3)):  # clear the host bits
        net = ipaddress.ip_network(f"{address}/{plen}", strict=False)
        address = str(net.network_address)
    line = f"{address}/{plen}"
    if kind == "broken":
        how = draw(st.integers(0, 7))
        if how == 0:
            line = f"{address}/{bits + draw(st.integers(1, 200))}"
        elif how == 1:
            line = f"{address}/0{plen}"
        elif how == 2:
            line = f"{address}/+{plen}"
        elif how == 3:
            line = f"{address}/"
        elif how == 4:
            line = f"{address}//{plen}"
        elif how == 5:
            line = f"{address}.0/{plen}" if bits == 32 else f"{address}::1/{plen}"
        elif how == 6:
            line = f"{address}/{plen}".replace(".", ".0", 1) if bits == 32 else f"[{line}"
        else:
            line = f"{address}/{'٣' if plen == 3 else plen}"  # a non-ASCII digit
    return line


@st.composite
def range_lines(draw: st.DrawFn) -> str:
    """FIRST-LAST as the fast path sees it: either order, either family, sometimes mixed,
    IPv4-mapped, or with a third address."""
    v6 = draw(st.booleans())
    first, _ = _v6(draw) if v6 else _v4(draw)
    last, _ = _v6(draw) if draw(st.integers(0, 9)) == 0 or v6 else _v4(draw)
    line = f"{first}-{last}"
    if draw(st.integers(0, 19)) == 0:
        line += f"-{last}"
    return line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_lines() | range_lines(), min_size=1, max_size=30))
def test_fast_path_and_general_path_build_the_same_table(lines: list[str]) -> None:
    fast = outcome(lines)
    general = outcome([line + GENERAL_SUFFIX for line in lines])
    assert fast == general


@settings(max_examples=300, deadline=None)
@given(plain_lines())
def test_fast_path_agrees_with_ipaddress(line: str) -> None:
    """Valid for the stdlib (strict: host bits clear) exactly when valid here, same block; an
    IPv4-mapped IPv6 block is stored as the IPv4 block it maps."""
    try:
        net = ipaddress.ip_network(line, strict=True)
    except ValueError:
        want = None
    else:
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.version == 6 and 0xFFFF00000000 <= first and last <= 0xFFFFFFFFFFFF:
            want = (4, first & 0xFFFFFFFF, last & 0xFFFFFFFF)
        else:
            want = (net.version, first, last)
    plen = line.partition("/")[2]
    # "/024": the stdlib reads any number of leading zeros, policyd up to three digits.
    assume(plen[:1] != "0" or plen == "0")
    try:
        n = Networks.from_lines([line])
    except NetworksError:
        got = None
    else:
        ((family, lo, hi, rng),) = n._intervals()
        got = (family, lo, hi)
        assert rng == Range(line, line, None, "<string>:1")
    assert got == want, line


# --------------------------------------------------------------------------------------------
# Ranges built on lookup


def test_ranges_stay_right_when_the_range_cache_starts_over() -> None:
    count = table._CACHE_MAX + 10

    def address(i: int) -> str:
        return f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}"

    n = Networks.from_lines([f"{address(i)} net{i}" for i in range(count)], "r.txt")
    for _ in range(2):
        for i in range(count):
            r = n.lookup(address(i))
            assert r == Range(f"net{i}", address(i), None, f"r.txt:{i + 1}")
    assert len(n._cache) <= table._CACHE_MAX


def test_sources_across_files_including_an_empty_one(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("# a\n10.0.0.0/8 a\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    c = tmp_path / "c.txt"
    c.write_text("\n\n10.1.0.0/16 c\n2001:db8::/32 c6\n")
    n = Networks.load([a, empty, c])
    assert [r.source for _, _, _, r in n._intervals()] == [
        f"{a}:2",
        f"{c}:3",
        f"{a}:2",
        f"{c}:4",
    ]


def test_utf8_error_column_counts_the_bom(tmp_path: Path) -> None:
    p = tmp_path / "r.txt"
    p.write_bytes(b"\xef\xbb\xbf10.0.0.0/8 \xff\n")
    with pytest.raises(
        NetworksError, match=r"r\.txt:1: not valid UTF-8 \(byte 0xff at column 15\)"
    ):
        Networks.load([p])
