"""Write a small MaxMind DB (the GeoIP2/GeoLite2 format) for tests: no database ships with
Debian, and the tests must not download one.

    write_country_db(path, {"198.51.100.0/24": "DE", "203.0.113.0/24": "BR"})

IPv6 tree (as GeoLite2), IPv4 networks under ::/96 (where readers look IPv4 addresses up);
24-bit records; each network's record is {"country": {"iso_code": CODE}}. Format: the MaxMind
DB File Format Specification 2.0 (search tree, 16 zero bytes, data section, metadata).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path


def _ctrl(type_: int, size: int) -> bytes:
    """A control byte (and the extended type byte) for a value of `size` (< 29)."""
    assert size < 29
    if type_ <= 7:
        return bytes([(type_ << 5) | size])
    return bytes([size, type_ - 7])


def _str(s: str) -> bytes:
    b = s.encode()
    return _ctrl(2, len(b)) + b


def _uint(type_: int, n: int) -> bytes:
    b = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return _ctrl(type_, len(b)) + b


def _map(d: dict[str, bytes]) -> bytes:
    return _ctrl(7, len(d)) + b"".join(_str(k) + v for k, v in d.items())


def _array(items: list[bytes]) -> bytes:
    return _ctrl(11, len(items)) + b"".join(items)


def write_country_db(path: Path, networks: dict[str, str]) -> Path:
    data = b""
    offsets: dict[str, int] = {}
    for code in sorted(set(networks.values())):
        offsets[code] = len(data)
        data += _map({"country": _map({"iso_code": _str(code)})})
    # the trie: node -> [left, right]; a child is ("node", n), ("data", code) or None
    nodes: list[list[tuple[str, object] | None]] = [[None, None]]
    for net_text, code in networks.items():
        net = ipaddress.ip_network(net_text)
        if net.version == 4:
            bits, plen = int(net.network_address), 96 + net.prefixlen
            bits_str = "0" * 96 + format(bits, "032b")
        else:
            plen = net.prefixlen
            bits_str = format(int(net.network_address), "0128b")
        node = 0
        for depth in range(plen):
            bit = int(bits_str[depth])
            if depth == plen - 1:
                nodes[node][bit] = ("data", code)
                break
            child = nodes[node][bit]
            if child is None:
                nodes.append([None, None])
                child = nodes[node][bit] = ("node", len(nodes) - 1)
            assert child[0] == "node", "overlapping networks are not supported here"
            node = int(child[1])  # type: ignore[call-overload]
    count = len(nodes)

    def record(child: tuple[str, object] | None) -> int:
        if child is None:
            return count  # no data
        if child[0] == "node":
            return int(child[1])  # type: ignore[call-overload]
        return count + 16 + offsets[str(child[1])]

    tree = b"".join(
        struct.pack(">I", record(left))[1:] + struct.pack(">I", record(right))[1:]
        for left, right in nodes
    )
    meta = _map(
        {
            "node_count": _uint(6, count),
            "record_size": _uint(5, 24),
            "ip_version": _uint(5, 6),
            "database_type": _str("policyd-test-Country"),
            "languages": _array([_str("en")]),
            "binary_format_major_version": _uint(5, 2),
            "binary_format_minor_version": _uint(5, 0),
            "build_epoch": _uint(9, int(time.time())),
            "description": _map({"en": _str("policyd test database")}),
        }
    )
    path.write_bytes(tree + b"\x00" * 16 + data + b"\xab\xcd\xefMaxMind.com" + meta)
    return path
