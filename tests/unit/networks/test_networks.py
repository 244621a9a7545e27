"""Allocated ranges: file format, errors, most-specific-wins, exclusions and lookup forms."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import netaddr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.networks import Networks, NetworksError, Range, patterns

REPO = Path(__file__).resolve().parents[3]


def nets(*lines: str) -> Networks:
    return Networks.from_lines(lines, "t.txt")


def label(n: Networks, address: object) -> str | None:
    r = n.lookup(address)
    return None if r is None else r.label


# --------------------------------------------------------------------------------------------
# Pattern forms


def test_ipv4_cidr_boundaries() -> None:
    n = nets("192.0.2.0/24 a")
    assert label(n, "192.0.2.0") == "a"
    assert label(n, "192.0.2.255") == "a"
    assert label(n, "192.0.1.255") is None
    assert label(n, "192.0.3.0") is None


def test_ipv6_cidr_plain_and_bracketed() -> None:
    n = nets("2001:db8::/32 plain", "[2001:db9::]/48 bracketed")
    assert label(n, "2001:db8::1") == "plain"
    assert label(n, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff") == "plain"
    assert label(n, "2001:db9::1") == "bracketed"
    assert label(n, "2001:db9:0:1::1") == "bracketed"
    assert label(n, "2001:db9:1::") is None
    assert label(n, "2001:db7::1") is None


def test_ipv6_written_in_other_forms_is_the_same_address() -> None:
    n = nets("2001:0DB8:0000:0000:0000:0000:0000:0000/32 a")
    assert label(n, "2001:db8::5") == "a"


def test_prefix_zero_and_full_length() -> None:
    n = nets("0.0.0.0/0 all4", "192.0.2.1/32 host", "::/0 all6", "2001:db8::1/128 host6")
    assert label(n, "1.2.3.4") == "all4"
    assert label(n, "192.0.2.1") == "host"
    assert label(n, "2001:db8::2") == "all6"
    assert label(n, "2001:db8::1") == "host6"


def test_single_addresses() -> None:
    n = nets("192.0.2.1", "[192.0.2.2]", "2001:db8::1", "[2001:db8::2]")
    assert label(n, "192.0.2.1") == "192.0.2.1"
    assert label(n, "192.0.2.2") == "[192.0.2.2]"
    assert label(n, "192.0.2.3") is None
    assert label(n, "2001:db8::1") == "2001:db8::1"
    assert label(n, "2001:db8::2") == "[2001:db8::2]"
    assert label(n, "2001:db8::3") is None


def test_ranges_ipv4_and_ipv6() -> None:
    n = nets(
        "192.0.2.10-192.0.2.20 r4",
        "2001:db8::10-2001:db8::1:0 r6",
        "[2001:db9::1]-[2001:db9::3] r6b",
        "198.51.100.7-198.51.100.7 one",
    )
    assert label(n, "192.0.2.9") is None
    assert label(n, "192.0.2.10") == "r4"
    assert label(n, "192.0.2.20") == "r4"
    assert label(n, "192.0.2.21") is None
    assert label(n, "2001:db8::f") is None
    assert label(n, "2001:db8::10") == "r6"
    assert label(n, "2001:db8::ffff") == "r6"
    assert label(n, "2001:db8::1:0") == "r6"
    assert label(n, "2001:db8::1:1") is None
    assert label(n, "2001:db9::2") == "r6b"
    assert label(n, "198.51.100.7") == "one"
    assert label(n, "198.51.100.8") is None


def test_ranges_crossing_octet_boundaries() -> None:
    n = nets("192.0.2.250-192.0.3.5 r")
    assert label(n, "192.0.2.255") == "r"
    assert label(n, "192.0.3.0") == "r"
    assert label(n, "192.0.3.6") is None


def test_globs() -> None:
    n = nets("192.0.2.* star", "198.51.100-101.* two", "203.0.113.10-20 octet", "10.*.*.* ten")
    assert label(n, "192.0.2.0") == "star"
    assert label(n, "192.0.2.255") == "star"
    assert label(n, "192.0.3.0") is None
    assert label(n, "198.51.100.1") == "two"
    assert label(n, "198.51.101.255") == "two"
    assert label(n, "198.51.102.0") is None
    assert label(n, "203.0.113.9") is None
    assert label(n, "203.0.113.10") == "octet"
    assert label(n, "203.0.113.20") == "octet"
    assert label(n, "203.0.113.21") is None
    assert label(n, "10.255.0.1") == "ten"


def test_ipv4_mapped_pattern_is_stored_as_ipv4() -> None:
    n = nets("::ffff:192.0.2.0/120 mapped")
    assert label(n, "192.0.2.9") == "mapped"
    assert label(n, "::ffff:192.0.2.9") == "mapped"
    assert len(n) == 1
    assert n.summary().startswith("1 range (1 IPv4, 0 IPv6)")


# --------------------------------------------------------------------------------------------
# Client address forms


def test_client_forms() -> None:
    n = nets("192.0.2.0/24 v4", "2001:db8::/32 v6")
    assert label(n, "192.0.2.1") == "v4"
    assert label(n, "[192.0.2.1]") == "v4"
    assert label(n, "2001:db8::1") == "v6"
    assert label(n, "[2001:db8::1]") == "v6"
    assert label(n, "IPv6:2001:db8::1") == "v6"  # milter {client_addr}
    assert label(n, "ipv6:2001:db8::1") == "v6"
    assert label(n, "[IPv6:2001:db8::1]") == "v6"
    assert label(n, "2001:DB8::1") == "v6"
    assert label(n, " 192.0.2.1\n") == "v4"


def test_ipv4_mapped_client_matches_ipv4_ranges() -> None:
    n = nets("192.0.2.0/24 v4", "::/0 all-v6")
    assert label(n, "::ffff:192.0.2.1") == "v4"
    assert label(n, "::FFFF:192.0.2.1") == "v4"
    assert label(n, "::ffff:c000:201") == "v4"
    assert label(n, "[::ffff:192.0.2.1]") == "v4"
    assert label(n, "IPv6:::ffff:192.0.2.1") == "v4"
    # A mapped address outside every IPv4 range does not fall back to the IPv6 ranges.
    assert label(n, "::ffff:198.51.100.1") is None
    # The deprecated IPv4-compatible form is an ordinary IPv6 address.
    assert label(n, "::192.0.2.1") == "all-v6"


@pytest.mark.parametrize(
    "address",
    [
        "unknown",
        "",
        " ",
        "[]",
        "IPv6:",
        "garbage",
        "192.0.2",
        "192.0.2.1.5",
        "192.0.2.256",
        "010.0.0.1",
        "192.0.2.1/32",
        "2001:db8::1::2",
        "fe80::1%eth0",
        "192.0.2.1\x00",
        "１９２.0.2.1",
        "[192.0.2.1",
        "2001:db8::g",
        "IPv6:192.0.2.x",
    ],
)
def test_garbage_never_matches(address: str) -> None:
    n = nets("0.0.0.0/0 all4", "::/0 all6")
    assert n.lookup(address) is None


@pytest.mark.parametrize("value", [None, 3232235777, b"192.0.2.1", ["192.0.2.1"]])
def test_lookup_of_non_strings_never_raises(value: object) -> None:
    n = nets("0.0.0.0/0 all4", "::/0 all6")
    assert n.lookup(value) is None


def test_empty_networks() -> None:
    n = Networks.empty()
    assert len(n) == 0
    assert n.exclusions == 0
    assert n.lookup("192.0.2.1") is None
    assert n.lookup("2001:db8::1") is None
    assert n.lookup("::ffff:192.0.2.1") is None
    assert n.summary() == "0 ranges (0 IPv4, 0 IPv6), 0 exclusions, 0 restricted to sender domains"
    assert Networks.load([]).summary() == n.summary()


# --------------------------------------------------------------------------------------------
# Labels, domains, comments


def test_labels_default_to_the_pattern_as_written() -> None:
    n = nets("192.0.2.0/24", "[2001:db8::]/32", "198.51.100.1-198.51.100.9 dsl")
    r = n.lookup("192.0.2.5")
    assert r == Range("192.0.2.0/24", "192.0.2.0/24", None, "t.txt:1")
    r6 = n.lookup("2001:db8::5")
    assert r6 is not None and r6.label == r6.pattern == "[2001:db8::]/32"
    r3 = n.lookup("198.51.100.5")
    assert r3 is not None and (r3.label, r3.pattern, r3.source) == (
        "dsl",
        "198.51.100.1-198.51.100.9",
        "t.txt:3",
    )


def test_label_may_be_any_word_without_equals() -> None:
    n = nets("192.0.2.0/24 Kunde-Müller_42!")
    assert label(n, "192.0.2.1") == "Kunde-Müller_42!"


def test_domains_are_normalised() -> None:
    n = nets(
        "192.0.2.0/24 web domains=Example.ORG,bücher.example,example.net.",
        "198.51.100.0/24 domains=example.com",
        "203.0.113.0/24 free",
    )
    r = n.lookup("192.0.2.1")
    assert r is not None
    assert r.domains == frozenset({"example.org", "xn--bcher-kva.example", "example.net"})
    r2 = n.lookup("198.51.100.1")
    assert r2 is not None and r2.label == "198.51.100.0/24"
    assert r2.domains == frozenset({"example.com"})
    r3 = n.lookup("203.0.113.1")
    assert r3 is not None and r3.domains is None
    assert n.summary().endswith("2 restricted to sender domains")


def test_domains_before_label_and_on_slow_path_forms() -> None:
    n = nets("192.0.2.* domains=example.org star", "[2001:db8::1] domains=EXAMPLE.net")
    r = n.lookup("192.0.2.1")
    assert r is not None and r.label == "star" and r.domains == frozenset({"example.org"})
    r6 = n.lookup("2001:db8::1")
    assert r6 is not None and r6.domains == frozenset({"example.net"})


def test_comments_blank_lines_and_whitespace() -> None:
    n = Networks.from_lines(
        [
            "# a comment",
            "",
            "   \t ",
            "192.0.2.0/24 a   # trailing comment",
            "  198.51.100.0/24\tb\r",
            "203.0.113.0/24#no space before the comment",
            "# 10.0.0.0/8 commented out",
            "!192.0.2.128/25 # trailing comment on an exclusion",
        ],
        "t.txt",
    )
    assert len(n) == 3
    assert n.exclusions == 1
    assert label(n, "192.0.2.1") == "a"
    assert label(n, "192.0.2.129") is None
    assert label(n, "198.51.100.1") == "b"
    assert label(n, "203.0.113.1") == "203.0.113.0/24"
    assert label(n, "10.0.0.1") is None


def test_lines_with_trailing_newlines_are_accepted() -> None:
    n = Networks.from_lines(["192.0.2.0/24 a\n", "\n", "2001:db8::/32 b\r\n"])
    assert label(n, "192.0.2.1") == "a"
    assert label(n, "2001:db8::1") == "b"


# --------------------------------------------------------------------------------------------
# Overlaps and exclusions


def test_most_specific_wins_three_deep_in_any_order() -> None:
    lines = ["10.0.0.0/8 outer", "10.1.0.0/16 middle", "10.1.2.0/24 inner"]
    for order in (lines, lines[::-1], [lines[1], lines[2], lines[0]]):
        n = nets(*order)
        assert label(n, "10.9.9.9") == "outer"
        assert label(n, "10.1.9.9") == "middle"
        assert label(n, "10.1.2.3") == "inner"
        assert label(n, "10.1.3.0") == "middle"
        assert label(n, "10.2.0.0") == "outer"
        assert label(n, "11.0.0.0") is None


def test_most_specific_wins_ipv6_three_deep() -> None:
    n = nets("2001:db8::/32 outer", "2001:db8:1::/48 middle", "2001:db8:1:2::/64 inner")
    assert label(n, "2001:db8:9::1") == "outer"
    assert label(n, "2001:db8:1:9::1") == "middle"
    assert label(n, "2001:db8:1:2::1") == "inner"


def test_smaller_range_wins_over_partly_overlapping_larger_range() -> None:
    n = nets("192.0.2.0-192.0.2.99 big", "192.0.2.90-192.0.2.109 small")
    assert label(n, "192.0.2.89") == "big"
    assert label(n, "192.0.2.90") == "small"
    assert label(n, "192.0.2.99") == "small"
    assert label(n, "192.0.2.109") == "small"
    assert label(n, "192.0.2.110") is None


def test_equal_size_later_line_wins() -> None:
    n = nets("192.0.2.0/24 first", "192.0.2.0/24 second")
    assert label(n, "192.0.2.1") == "second"
    # Same size, different shapes: a 256-address range and a /24 overlapping half of it.
    n = nets("192.0.2.128-192.0.3.127 range", "192.0.3.0/24 cidr")
    assert label(n, "192.0.2.200") == "range"
    assert label(n, "192.0.3.1") == "cidr"
    assert label(n, "192.0.3.200") == "cidr"
    n = nets("192.0.3.0/24 cidr", "192.0.2.128-192.0.3.127 range")
    assert label(n, "192.0.3.1") == "range"
    assert label(n, "192.0.3.200") == "cidr"


def test_glob_and_cidr_of_the_same_block_later_wins() -> None:
    assert label(nets("192.0.2.* glob", "192.0.2.0/24 cidr"), "192.0.2.7") == "cidr"
    assert label(nets("192.0.2.0/24 cidr", "192.0.2.* glob"), "192.0.2.7") == "glob"


def test_exclusion_applies_to_every_range_in_any_order() -> None:
    for lines in (
        ["10.0.0.0/8 a", "10.0.0.0/16 b", "!10.0.5.0/24"],
        ["!10.0.5.0/24", "10.0.0.0/8 a", "10.0.0.0/16 b"],
    ):
        n = nets(*lines)
        assert len(n) == 2 and n.exclusions == 1
        assert label(n, "10.0.4.255") == "b"
        assert label(n, "10.0.5.0") is None
        assert label(n, "10.0.5.255") is None
        assert label(n, "10.0.6.0") == "b"


def test_exclusion_inside_nested_range() -> None:
    n = nets(
        "10.0.0.0/8 outer",
        "10.1.0.0/16 middle",
        "10.1.2.0/24 inner",
        "!10.1.2.128/25",
        "!10.1.2.7",
    )
    assert label(n, "10.1.2.6") == "inner"
    assert label(n, "10.1.2.7") is None
    assert label(n, "10.1.2.8") == "inner"
    assert label(n, "10.1.2.127") == "inner"
    assert label(n, "10.1.2.128") is None
    assert label(n, "10.1.2.255") is None
    assert label(n, "10.1.3.0") == "middle"


def test_exclusion_removes_even_a_more_specific_range() -> None:
    n = nets("!192.0.2.0/24", "192.0.2.5 host", "192.0.2.0/24 net")
    assert label(n, "192.0.2.5") is None
    assert label(n, "192.0.2.6") is None


def test_exclusion_forms_ipv6_range_and_glob() -> None:
    n = nets(
        "2001:db8::/32 v6",
        "![2001:db8::]/48",
        "!2001:db8:1::5-2001:db8:1::7",
        "192.0.2.0/24 v4",
        "!192.0.2.1-9",
        "!192.0.2.20-192.0.2.29",
    )
    assert n.exclusions == 4
    assert label(n, "2001:db8::1") is None
    assert label(n, "2001:db8:1::4") == "v6"
    assert label(n, "2001:db8:1::6") is None
    assert label(n, "2001:db8:1::8") == "v6"
    assert label(n, "192.0.2.0") == "v4"
    assert label(n, "192.0.2.5") is None
    assert label(n, "192.0.2.10") == "v4"
    assert label(n, "192.0.2.25") is None
    assert label(n, "::ffff:192.0.2.25") is None


def test_compiled_table_is_sorted_disjoint_and_merged() -> None:
    def table(n: Networks) -> list[tuple[str, str, str]]:
        return [
            (str(ipaddress.ip_address(f)), str(ipaddress.ip_address(last)), r.label)
            for _, f, last, r in n._intervals()
        ]

    n = nets("10.0.0.0/8 a", "10.0.0.0/16 b", "10.255.0.0/16 c", "10.0.0.0/8 a2")
    assert table(n) == [
        ("10.0.0.0", "10.0.255.255", "b"),
        ("10.1.0.0", "10.254.255.255", "a2"),
        ("10.255.0.0", "10.255.255.255", "c"),
    ]
    # The outer range continues after a nested one ends: no split where nothing changes.
    n = nets("2001:db8::/32 a", "2001:db8:1::/48 b", "!2001:db8:1::/48", "2001:db8::/64 c")
    assert table(n) == [
        ("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff", "c"),
        ("2001:db8:0:1::", "2001:db8:0:ffff:ffff:ffff:ffff:ffff", "a"),
        ("2001:db8:2::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "a"),
    ]


def test_len_exclusions_and_summary() -> None:
    n = nets(
        "192.0.2.0/24 domains=example.org",
        "198.51.100.0/24",
        "2001:db8::/32 domains=example.org",
        "!192.0.2.5",
    )
    assert len(n) == 3
    assert n.exclusions == 1
    assert n.summary() == "3 ranges (2 IPv4, 1 IPv6), 1 exclusion, 2 restricted to sender domains"
    assert "3 ranges" in repr(n)


def test_range_is_frozen_and_hashable() -> None:
    r = nets("192.0.2.0/24 a").lookup("192.0.2.1")
    assert r is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.label = "b"  # type: ignore[misc]
    assert hash(r) == hash(Range("a", "192.0.2.0/24", None, "t.txt:1"))


def test_range_built_from_its_line_on_lookup_equals_one_built_directly() -> None:
    n = nets("192.0.2.0/24", "198.51.100.0/24  web domains=Example.ORG  # c", "2001:db8::/32\r")
    r = n.lookup("192.0.2.1")
    assert type(r) is Range
    assert r == Range("192.0.2.0/24", "192.0.2.0/24", None, "t.txt:1")
    assert n.lookup("198.51.100.9") == Range(
        "web", "198.51.100.0/24", frozenset({"example.org"}), "t.txt:2"
    )
    assert n.lookup("2001:db8::1") == Range("2001:db8::/32", "2001:db8::/32", None, "t.txt:3")
    assert n.lookup("192.0.2.1") is n.lookup("192.0.2.255")  # built once, then kept


def test_load_does_not_leave_the_garbage_collector_disabled() -> None:
    import gc

    assert gc.isenabled()
    nets("192.0.2.0/24")
    assert gc.isenabled()
    with pytest.raises(NetworksError):
        nets("192.0.2.1/24")
    assert gc.isenabled()


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("10.1.2.3/8", "host bits set in 10.1.2.3/8 (did you mean 10.0.0.0/8?)"),
        ("2001:db8::1/32", "host bits set in 2001:db8::1/32 (did you mean 2001:db8::/32?)"),
        ("[2001:db8::1]/32", "(did you mean [2001:db8::]/32?)"),
        ("192.0.2.20-192.0.2.10", "reversed range"),
        ("2001:db8::9-2001:db8::1", "reversed range"),
        ("192.0.2.1-2001:db8::1", "mixes IPv4 and IPv6"),
        ("2001:db8::1-192.0.2.1", "mixes IPv4 and IPv6"),
        ("192.0.2.1-192.0.2.5-192.0.2.9", "more than one '-'"),
        ("192.0.2.1-192.0.2", "invalid range"),
        ("192.*.2.*", "invalid IPv4 glob"),
        ("192.0-1.2.*", "invalid IPv4 glob"),
        ("192.0.3-2.*", "invalid IPv4 glob"),
        ("2001:db8::*", "invalid IPv4 glob"),
        ("192.0.2", "invalid IP address '192.0.2'"),
        ("192.0.2.256", "invalid IP address"),
        ("garbage", "invalid IP address 'garbage'"),
        ("2001:db8::1::2", "invalid IP address"),
        ("fe80::1%eth0", "zone index"),
        ("[2001:db8::/32", "bracket"),
        ("010.0.0.1", "leading zero"),
        ("10.0.0.010/32", "leading zero"),
        ("192.0.02.0/24", "leading zero"),
        ("192.0.02.*", "leading zero"),
        ("192.0.2.010-020", "leading zero"),
        ("192.0.2.1-192.0.2.09", "leading zero"),
        ("::ffff:010.0.0.1", "leading zero"),
        ("10.0.0.0/33", "prefix length /33 is out of range for IPv4 (0-32)"),
        ("2001:db8::/129", "out of range for IPv6 (0-128)"),
        ("10.0.0.0/", "missing prefix length"),
        ("10.0.0.0/255.0.0.0", "netmask notation is not supported"),
        ("10.0.0.0/x", "prefix length 'x' is not a number"),
        ("10.0.0.0/+8", "is not a number"),
        ("10.0.0.0/8 foo=bar", "unknown field 'foo=' (known: domains=)"),
        ("10.0.0.0/8 =x", "unknown field '='"),
        ("10.0.0.0/8 Domains=example.org", "unknown field 'Domains='"),
        ("10.0.0.0/8 a b", "more than one label: 'a' and 'b'"),
        ("192.0.2.10 - 192.0.2.20", "without spaces around '-'"),
        ("10.0.0.0/8 domains=", "empty domain"),
        ("10.0.0.0/8 domains=a.example,,b.example", "empty domain"),
        ("10.0.0.0/8 domains=a@example.org", "invalid domain 'a@example.org'"),
        ("10.0.0.0/8 domains=-bad-.example", "invalid domain"),
        ("10.0.0.0/8 domains=a.example domains=b.example", "domains= given twice"),
        ("! 10.0.0.0/8", "'!' must be followed directly by a pattern"),
        ("!10.0.0.0/8 label", "an exclusion takes no label or fields"),
        ("!10.0.0.0/8 domains=example.org", "an exclusion takes no label or fields"),
        ("!10.1.2.3/8", "host bits set"),
    ],
)
def test_errors_name_file_line_and_reason(line: str, why: str) -> None:
    with pytest.raises(NetworksError) as e:
        Networks.from_lines(["# header", "192.0.2.0/24 ok", line, "198.51.100.0/24"], "r.txt")
    message = str(e.value)
    assert message.startswith("r.txt:3: "), message
    assert why in message


def test_error_in_a_file_names_the_path(tmp_path: Path) -> None:
    f = tmp_path / "ranges.txt"
    f.write_text("192.0.2.0/24\n\n# comment\n10.1.2.3/8 bad\n", encoding="utf-8")
    with pytest.raises(NetworksError, match=r"ranges\.txt:4: host bits set in 10\.1\.2\.3/8"):
        Networks.load([f])


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(NetworksError) as e:
        Networks.load([missing])
    assert str(e.value).startswith(f"{missing}: cannot read")
    assert "No such file" in str(e.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(NetworksError, match="cannot read"):
        Networks.load([tmp_path])


def test_path_through_a_file_cannot_be_read(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("192.0.2.0/24\n")
    with pytest.raises(NetworksError, match="file.txt/ranges.txt: cannot read: Not a directory"):
        Networks.load([f / "ranges.txt"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    f = tmp_path / "secret.txt"
    f.write_text("192.0.2.0/24\n")
    f.chmod(0)
    with pytest.raises(NetworksError, match="secret.txt: cannot read: Permission denied"):
        Networks.load([f])


def test_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"192.0.2.0/24\n198.51.100.0/24 M\xfcller\n")
    with pytest.raises(NetworksError) as e:
        Networks.load([f])
    assert str(e.value) == f"{f}:2: not valid UTF-8 (byte 0xfc at column 18)"


def test_utf8_bom_crlf_and_unicode_labels(tmp_path: Path) -> None:
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeff192.0.2.0/24 Müller\r\n2001:db8::/32\r\n".encode())
    n = Networks.load([str(f)])
    assert label(n, "192.0.2.1") == "Müller"
    r = n.lookup("2001:db8::1")
    assert r is not None and r.source == f"{f}:2"


def test_several_files_combined(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("10.0.0.0/8 a-outer\n192.0.2.0/24 a-net\n!10.9.0.0/16\n")
    b.write_text("# second file\n10.1.0.0/16 b-inner\n192.0.2.0/24 b-net\n10.9.1.0/24 b-ex\n")
    n = Networks.load([a, b])
    assert len(n) == 5 and n.exclusions == 1
    assert label(n, "10.0.0.1") == "a-outer"
    assert label(n, "10.1.0.1") == "b-inner"
    assert label(n, "192.0.2.1") == "b-net"  # same size: the later file wins
    assert label(n, "10.9.1.1") is None  # an exclusion in one file applies to the others
    r = n.lookup("10.1.0.1")
    assert r is not None and r.source == f"{b}:2"
    r = n.lookup("10.0.0.1")
    assert r is not None and r.source == f"{a}:1"
    assert label(Networks.load([b, a]), "192.0.2.1") == "a-net"


def test_a_single_path_or_a_single_string_is_not_split_into_characters(tmp_path: Path) -> None:
    f = tmp_path / "one.txt"
    f.write_text("192.0.2.0/24 one\n")
    assert label(Networks.load(f), "192.0.2.1") == "one"
    assert label(Networks.load(str(f)), "192.0.2.1") == "one"
    n = Networks.from_lines("192.0.2.0/24 a\n# comment\n2001:db8::/32 b\n", "s.txt")
    assert label(n, "2001:db8::1") == "b"
    r = n.lookup("2001:db8::1")
    assert r is not None and r.source == "s.txt:3"


def test_error_in_second_file_names_that_file(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("192.0.2.0/24\n")
    b.write_text("198.51.100.0/24\n192.0.2.20-192.0.2.10\n")
    with pytest.raises(NetworksError, match=r"b\.txt:2: reversed range"):
        Networks.load([a, b])


def test_example_file_loads() -> None:
    n = Networks.load([REPO / "conf" / "ranges.txt"])
    assert len(n) >= 8 and n.exclusions >= 1
    hosting = n.lookup("192.0.2.1")
    assert hosting is not None and hosting.label == "hosting" and hosting.domains is None
    web = n.lookup("192.0.2.70")
    assert web is not None and web.label == "webfarm"
    assert web.domains == frozenset({"example.org", "example.net", "xn--bcher-kva.example"})
    assert n.lookup("192.0.2.100") is None  # excluded
    assert label(n, "198.51.100.50") == "dsl-pool-a"
    assert label(n, "198.51.100.130") == "dsl-pool-b"
    assert label(n, "203.0.113.7") == "203.0.113.7"
    assert label(n, "203.0.113.8") == "office"
    assert label(n, "203.0.113.250") is None  # excluded
    ab = n.lookup("2001:db8:1000:ab00::1")
    assert ab is not None and ab.label == "customer-ab"
    assert ab.domains == frozenset({"example.com"})
    assert label(n, "2001:db8:1000:1::1") == "v6-customers"
    assert label(n, "2001:db8:2000::1f") == "v6-servers"
    assert label(n, "[2001:db8:3000::25]") == "v6-mx"
    assert label(n, "::ffff:192.0.2.1") == "hosting"


# --------------------------------------------------------------------------------------------
# Property: lookup agrees with a brute-force reference


V4_BASE = int(ipaddress.IPv4Address("192.0.2.0"))
# 32 addresses below a /64 boundary and 32 above it: exercises the IPv6 two-level search.
V6_BASE = int(ipaddress.IPv6Address("2001:db8:0:1::")) - 32
SPACE = 64  # addresses per family in the random sets: small, so ranges overlap a lot


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, int, int, int, bool]:
    """(line, family, first, last, is_exclusion) for a random pattern inside the test space."""
    v6, kind, x, y, shift, flags = draw(
        st.tuples(
            st.booleans(),
            st.sampled_from(["cidr", "range", "single", "glob"]),
            st.integers(0, SPACE - 1),
            st.integers(0, SPACE - 1),
            st.integers(0, 6),  # CIDR: 2**shift addresses
            st.integers(0, 31),  # bits: exclusion, brackets, name
        )
    )
    family, base, bits = (6, V6_BASE, 128) if v6 else (4, V4_BASE, 32)
    exclusion = flags & 3 == 0  # a quarter

    def text(v: int) -> str:
        a = ipaddress.ip_address(base + v)
        return f"[{a}]" if v6 and flags & 4 else str(a)

    first, last = min(x, y), max(x, y)
    if kind == "cidr":
        size = 1 << (min(shift, 5) if v6 else shift)  # V6_BASE is only 32-aligned
        first = first // size * size
        last = first + size - 1
        pattern = f"{text(first)}/{bits - size.bit_length() + 1}"
    elif kind == "range":
        pattern = f"{text(first)}-{text(last)}"
    elif kind == "glob" and not v6:
        pattern = f"192.0.2.{first}-{last}" if first != last else f"192.0.2.{first}"
    else:
        last = first
        pattern = text(first)
    if exclusion:
        return f"!{pattern}", family, base + first, base + last, True
    name = ["", " a", " b", " domains=example.org"][flags >> 3 & 3]
    return f"{pattern}{name}", family, base + first, base + last, False


def reference(table: list[tuple[str, int, int, int, bool]], family: int, value: int) -> int | None:
    """Linear scan: the line number of the winner, or None."""
    best: tuple[int, int] | None = None
    for lineno, (_, fam, first, last, excl) in enumerate(table, 1):
        if fam != family or not first <= value <= last:
            continue
        if excl:
            return None
        size = last - first + 1
        if best is None or size <= best[1]:  # "<=": a later line of equal size wins
            best = (lineno, size)
    return None if best is None else best[0]


def _probe(address: str) -> tuple[str, int, int]:
    """(address, family, value) by stdlib ipaddress, IPv4-mapped folded to IPv4."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return address, ip.version, int(ip)


PROBES = (
    [_probe(str(ipaddress.IPv4Address(V4_BASE + v))) for v in range(-1, SPACE + 1)]
    + [_probe(str(ipaddress.IPv6Address(V6_BASE + v))) for v in range(-1, SPACE + 1)]
    + [_probe(f"::ffff:{ipaddress.IPv4Address(V4_BASE + v)}") for v in range(0, SPACE, 7)]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entries(), max_size=12))
def test_lookup_matches_brute_force_reference(table: list[tuple[str, int, int, int, bool]]) -> None:
    n = Networks.from_lines([line for line, *_ in table], "p.txt")
    assert len(n) == sum(1 for e in table if not e[4])
    assert n.exclusions == sum(1 for e in table if e[4])
    for address, family, value in PROBES:
        want = reference(table, family, value)
        got = n.lookup(address)
        if want is None:
            assert got is None, (address, got)
        else:
            assert got is not None, (address, want)
            assert got.source == f"p.txt:{want}", (address, got, want)


# --------------------------------------------------------------------------------------------
# Property: the inline fast path and the general parser validate exactly alike, and as netaddr


def netaddr_reference(pattern: str) -> tuple[int, int, int] | None:
    """(family, first, last) by netaddr (strict INET_PTON parsing), or None if invalid."""
    address, _, plen = pattern.partition("/")
    try:
        ip = netaddr.IPAddress(address)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    bits = 32 if ip.version == 4 else 128
    if plen:
        if not plen.isdigit() or int(plen) > bits:
            return None
        net = netaddr.IPNetwork(pattern)
        if net.ip != net.network:  # host bits set
            return None
        first, last = int(net.first), int(net.last)
    else:
        first = last = int(ip)
    if ip.version == 6 and 0xFFFF00000000 <= first and last <= 0xFFFFFFFFFFFF:
        return 4, first & 0xFFFFFFFF, last & 0xFFFFFFFF
    return ip.version, first, last


@st.composite
def address_texts(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        octets = [
            draw(st.sampled_from(["", "0", "00"])) + str(draw(st.integers(0, 260)))
            if draw(st.integers(0, 9)) == 0
            else str(draw(st.integers(0, 255)))
            for _ in range(draw(st.sampled_from([4, 4, 4, 3, 5])))
        ]
        return ".".join(octets)
    value = draw(st.integers(0, (1 << 128) - 1) | st.integers(0xFFFF00000000, 0xFFFFFFFFFFFF))
    a = ipaddress.IPv6Address(value)
    style = draw(st.sampled_from(["compressed", "exploded", "upper", "mapped-dotted"]))
    if style == "exploded":
        return a.exploded
    if style == "upper":
        return a.compressed.upper()
    if style == "mapped-dotted" and a.ipv4_mapped is not None:
        return f"::ffff:{a.ipv4_mapped}"
    return a.compressed


@st.composite
def cidr_texts(draw: st.DrawFn) -> str:
    address = draw(address_texts())
    if draw(st.booleans()):
        return address
    plen = draw(st.integers(0, 130))
    if draw(st.booleans()):
        # Mostly valid: clear the host bits.
        try:
            net = netaddr.IPNetwork(f"{address}/{plen}")
            address = str(net.network)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            pass
    return f"{address}/{plen}"


@settings(max_examples=300, deadline=None)
@given(cidr_texts())
def test_fast_path_slow_path_and_netaddr_agree(pattern: str) -> None:
    want = netaddr_reference(pattern)
    try:
        slow: tuple[int, int, int] | None = patterns.parse_pattern(pattern)
    except patterns.Bad:
        slow = None
    try:
        n = Networks.from_lines([pattern])
    except NetworksError:
        fast = None
    else:
        ((family, first, last, _),) = n._intervals()
        fast = (family, first, last)
    assert fast == slow == want, pattern


def test_wide_ranges_are_reported() -> None:
    from policyd.networks import Networks as N

    net = N.from_lines(
        [
            "0.0.0.0/0 oops",
            "10.0.0.0/8 internal",
            "::/0",
            "2001:db8::/32",
            "!0.0.0.0/1",
            "1.0.0.0-3.0.0.0",
        ],
        source="r.txt",
    )
    assert [r.source for r in net.wide] == ["r.txt:1", "r.txt:6", "r.txt:3"]
    assert N.from_lines(["10.0.0.0/8", "2001::/16"]).wide == ()
    assert N.empty().wide == ()
