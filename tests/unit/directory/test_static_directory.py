from __future__ import annotations

from pathlib import Path

import pytest

from policyd.addresses import AddressRules
from policyd.directory.base import DirectoryError
from policyd.directory.static import StaticDirectory

CONF = Path(__file__).resolve().parents[3] / "conf"
R = AddressRules(realms=frozenset({"example.org"}))


def test_shipped_senders_file_loads() -> None:
    d = StaticDirectory.load(CONF / "senders.txt", AddressRules())
    assert "alice@example.org" in d.addresses_of("alice")
    assert "sales@example.org" in d.addresses_of("bob")
    assert d.addresses_of("carol") == frozenset({"@carol.example"})
    assert d.owners_of("sales@example.org") == frozenset({"alice", "bob"})
    assert d.owners_of("@carol.example") == frozenset({"carol"})
    # exact keys only: the extension and @domain fallbacks are the caller's (addresses.owns)
    assert d.owners_of("anyone+x@carol.example") == frozenset()
    assert d.addresses_of("nobody") == frozenset()


def test_lines_add_up_and_are_normalised() -> None:
    d = StaticDirectory.from_lines(
        ["Alice@Example.org: Alice@Example.ORG", "alice: second@example.net  # comment", "", "# x"],
        R,
    )
    assert d.addresses_of("alice") == frozenset({"alice@example.org", "second@example.net"})
    assert d.owners_of("alice@example.org") == frozenset({"alice"})


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("alice alice@example.org", "expected 'LOGIN: address"),
        (": alice@example.org", "no login"),
        ("alice:", "no address"),
        ("alice: alice", "is not an address"),
        ("alice: alice@", "is not an address"),
        ("alice: key=value@x", "is not an address"),
    ],
)
def test_malformed_lines_name_file_and_line(line: str, why: str) -> None:
    with pytest.raises(DirectoryError) as ei:
        StaticDirectory.from_lines(["# ok", "bob: bob@example.org", line], R, source="s.txt")
    assert str(ei.value).startswith("s.txt:3: ")
    assert why in str(ei.value)


def test_unreadable_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match="cannot read"):
        StaticDirectory.load(tmp_path / "missing", R)
    p = tmp_path / "bad"
    p.write_bytes(b"alice: \xff@example.org\n")
    with pytest.raises(DirectoryError, match="not UTF-8"):
        StaticDirectory.load(p, R)
