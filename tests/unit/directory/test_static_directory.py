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


# addresses.realms must not merge people (issue 27 item 1)
TWO_REALMS = AddressRules(realms=frozenset({"example.org", "example.net"}))


def test_realms_refuse_two_people_with_one_local_part() -> None:
    lines = ["alice: alice@example.org", "asmith: alice@example.net"]
    with pytest.raises(DirectoryError) as ei:
        StaticDirectory.from_lines(lines, TWO_REALMS, source="senders.txt")
    msg = str(ei.value)
    assert msg.startswith("senders.txt: addresses.realms would merge different people")
    assert "alice@example.net (asmith)" in msg and "alice@example.org (alice)" in msg
    assert "smtpd_sasl_local_domain" in msg
    # one realm merges nobody; nor do two realms when one person holds both addresses
    StaticDirectory.from_lines(lines, R)
    StaticDirectory.from_lines(["alice: alice@example.org, alice@example.net"], TWO_REALMS)


def test_realms_refuse_two_full_address_logins_with_one_user() -> None:
    lines = ["alice@example.org: a@example.org", "alice@example.net: b@example.net"]
    with pytest.raises(DirectoryError) as ei:
        StaticDirectory.from_lines(lines, TWO_REALMS, source="senders.txt")
    msg = str(ei.value)
    assert "alice@example.net (senders.txt:2)" in msg and "alice@example.org (senders.txt:1)" in msg
    # the Cyrus case realms is for: "alice" and "alice@example.org" are one login
    d = StaticDirectory.from_lines(["alice: a@example.org", "alice@example.org: b@example.org"], R)
    assert d.addresses_of("alice") == {"a@example.org", "b@example.org"}


def test_full_address_logins_without_realms() -> None:
    # Dovecot's %Lu: the login is the address; two alices at two domains stay two people
    d = StaticDirectory.from_lines(
        ["alice@example.org: alice@example.org", "alice@example.net: alice@example.net"],
        AddressRules(),
    )
    assert d.addresses_of("alice@example.org") == {"alice@example.org"}
    assert d.addresses_of("alice@example.net") == {"alice@example.net"}
    assert d.owners_of("alice@example.org") == {"alice@example.org"}
    assert d.addresses_of("alice") == frozenset()
