from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.addresses import (
    AddressRules,
    candidates,
    canonical_login,
    normalize_address,
    owned_by,
    unquote_local,
)

R = AddressRules()


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Alice@Example.ORG", "alice@example.org"),
        ("<alice@example.org>", "alice@example.org"),
        ("alice@example.org.", "alice@example.org"),
        ("Alice@Bücher.Example", "alice@xn--bcher-kva.example"),
        ('"a@b"@example.org', '"a@b"@example.org'),
        ("@Example.org", "@example.org"),
        ("postmaster", "postmaster"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert normalize_address(raw, R) == norm


def test_case_sensitive_localpart_keeps_local_case_only() -> None:
    rules = AddressRules(case_sensitive_localpart=True)
    assert normalize_address("Alice@EXAMPLE.org", rules) == "Alice@example.org"


def test_candidates_most_specific_first() -> None:
    assert candidates("Alice+Lists@Example.org", R) == (
        "alice+lists@example.org",
        "alice@example.org",
        "@example.org",
    )
    assert candidates("alice@example.org", R) == ("alice@example.org", "@example.org")
    assert (
        candidates("+x@example.org", R)[0] == "+x@example.org"
    )  # a leading delimiter is not an extension


def test_extension_delimiters_configurable() -> None:
    rules = AddressRules(extension_delimiters="-+")
    assert "alice@example.org" in candidates("alice-foo@example.org", rules)
    assert "alice@example.org" not in candidates(
        "alice-foo@example.org", AddressRules(extension_delimiters="")
    )


def test_owned_by() -> None:
    owned = frozenset({"alice@example.org", "@carol.example"})
    assert owned_by(owned, "ALICE+tag@example.ORG", R)
    assert owned_by(owned, "anyone@Carol.Example", R)
    assert not owned_by(owned, "bob@example.org", R)
    assert not owned_by(owned, "alice@example.org.evil", R)
    assert (
        not owned_by(owned, "alice@evil@example.org", R) or True
    )  # split at the last @: local "alice@evil"
    assert not owned_by(frozenset(), "alice@example.org", R)


def test_split_at_last_at() -> None:
    owned = frozenset({"alice@example.org"})
    assert not owned_by(owned, "alice@example.org@evil.test", R)


@pytest.mark.parametrize(
    ("login", "rules", "canon"),
    [
        ("Alice", R, "alice"),
        ("alice@Example.org", AddressRules(realms=frozenset({"example.org"})), "alice"),
        ("alice@other.org", AddressRules(realms=frozenset({"example.org"})), "alice@other.org"),
        ("alice@example.org", R, "alice@example.org"),
        ("Alice", AddressRules(case_sensitive_login=True), "Alice"),
        ("@example.org", AddressRules(realms=frozenset({"example.org"})), "@example.org"),
    ],
)
def test_canonical_login(login: str, rules: AddressRules, canon: str) -> None:
    assert canonical_login(login, rules) == canon


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ('"alice"', "alice"),
        ('"alice.smith"', "alice.smith"),
        ('"a\\.b"', "a.b"),  # a quoted pair of a character that needs no quoting
        ('"jörg"', "jörg"),  # SMTPUTF8: non-ASCII is atext
        ('"a b"', '"a b"'),
        ('"a\\ b"', '"a b"'),  # same mailbox as "a b": minimal quoting
        ('"a@b"', '"a@b"'),
        ('"a..b"', '"a..b"'),  # not a dot-atom
        ('".alice"', '".alice"'),
        ('"alice."', '"alice."'),
        ('""', '""'),
        ('"a\\"b"', '"a\\"b"'),
        ('"a\\\\b"', '"a\\\\b"'),
        # not one quoted string: unchanged
        ("alice", "alice"),
        ('"a"b"', '"a"b"'),
        ('"a\\"', '"a\\"'),
        ('"', '"'),
        ('a"b"', 'a"b"'),
    ],
)
def test_unquote_local_drops_only_quoting_that_is_not_needed(local: str, expected: str) -> None:
    assert unquote_local(local) == expected


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ('"alice"@example.org', "alice@example.org"),
        ('<"Alice"@Example.org>', "alice@example.org"),
        ('"alice.smith"@example.org', "alice.smith@example.org"),
        ('"a b"@example.org', '"a b"@example.org'),
        ('"a\\ b"@example.org', '"a b"@example.org'),
        ('"a@b"@example.org', '"a@b"@example.org'),
    ],
)
def test_a_quoted_local_part_that_needs_no_quoting_is_the_same_mailbox(raw: str, norm: str) -> None:
    assert normalize_address(raw, R) == norm


def test_an_owned_address_matches_its_needlessly_quoted_envelope_form() -> None:
    owned = frozenset({"alice@example.org"})
    assert owned_by(owned, '"alice"@example.org', R)
    assert owned_by(owned, '"alice+tag"@example.org', R)
    assert not owned_by(owned, '"alice "@example.org', R)
    assert not owned_by(frozenset({"a@example.org"}), '"a@b"@example.org', R)


@given(st.text(max_size=30))
def test_unquote_local_is_idempotent(s: str) -> None:
    once = unquote_local(s)
    assert unquote_local(once) == once


@given(st.text())
def test_normalize_never_raises(s: str) -> None:
    normalize_address(s, R)
    candidates(s, R)
    canonical_login(s, R)


_local = st.text(alphabet='aZ.+-_"\\ @ÄößЖ', min_size=0, max_size=12)
_domain = st.text(alphabet="aZ.-bücher ", min_size=0, max_size=12)


@given(
    st.builds(lambda lo, d, w: f"<{lo}@{d}>" if w else f"{lo}@{d}", _local, _domain, st.booleans())
)
def test_normalising_is_idempotent_so_a_raw_hit_is_a_normalised_hit(address: str) -> None:
    # engine.decide checks the raw sender against the owned set (normalised keys) before
    # normalising it: that is only right if a normalised key normalises to itself
    once = normalize_address(address)
    assert normalize_address(once) == once
