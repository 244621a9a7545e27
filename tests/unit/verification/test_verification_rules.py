"""Sender verification, the pure parts: the state table, tokens and codes, address rules."""

from __future__ import annotations

import hashlib
import itertools
import string

import pytest

from policyd.addresses import AddressRules
from policyd.verification import states, tokens
from policyd.verification.normalize import BadAddress, in_domains, normalize_request

RULES = AddressRules()

# -- the state machine, as the issue writes it ----------------------------------------------

EXPECTED = {
    (None, "request"): "pending",
    (None, "add_unverified"): "verified",
    ("pending", "resend"): "pending",
    ("pending", "confirm"): "verified",
    ("pending", "add_unverified"): "verified",
    ("pending", "expire"): "expired",
    ("pending", "cancel"): "cancelled",
    ("pending", "too_many_tries"): "cancelled",
    ("pending", "refuse"): "refused",
    ("verified", "revoke"): "revoked",
}
EVENTS = sorted({e for _, e in EXPECTED} | {"confirm", "revoke", "bogus"})


@pytest.mark.parametrize(
    ("state", "event"), list(itertools.product([None, *states.STATES], EVENTS))
)
def test_every_state_and_event_pair_is_either_the_documented_transition_or_refused(
    state: str | None, event: str
) -> None:
    if (state, event) in EXPECTED:
        assert states.next_state(state, event) == EXPECTED[(state, event)]
    else:
        with pytest.raises(states.InvalidTransition):
            states.next_state(state, event)


def test_only_verified_counts_as_owned_and_final_states_have_no_way_out() -> None:
    assert [s for s in states.STATES if states.counts_as_owned(s)] == ["verified"]
    for final in ("expired", "cancelled", "refused", "revoked"):
        assert not [e for (s, e) in states.TRANSITIONS if s == final]


# -- tokens and codes ------------------------------------------------------------------------


def test_a_token_has_256_random_bits_and_only_its_sha256_is_kept() -> None:
    seen = set()
    for _ in range(200):
        token, stored = tokens.new_token()
        assert tokens.plausible_token(token)
        assert len(token) == 43 and set(token) <= set(string.ascii_letters + string.digits + "-_")
        assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
        seen.add(token)
    assert len(seen) == 200


def test_a_code_is_8_digits_checked_against_a_salted_hash() -> None:
    codes = set()
    for _ in range(200):
        code, salt, stored = tokens.new_code()
        assert len(code) == 8 and code.isdigit()
        assert code not in stored and code not in salt
        assert tokens.code_matches(code, salt, stored)
        assert tokens.code_matches(f"{code[:4]} {code[4:]}", salt, stored)  # typed with a space
        wrong = f"{(int(code) + 1) % 10**8:08d}"
        assert not tokens.code_matches(wrong, salt, stored)
        codes.add(code)
    assert len(codes) > 190
    code, salt, stored = tokens.new_code()
    for bad in ("", code[:7], code + "0", "abcdefgh", "１２３４５６７８", None):
        assert not tokens.code_matches(bad, salt, stored)  # type: ignore[arg-type]


def test_the_same_code_in_two_requests_gives_different_hashes() -> None:
    assert tokens.code_hash("salt-a", "12345678") != tokens.code_hash("salt-b", "12345678")


def test_implausible_tokens_are_refused_before_any_lookup() -> None:
    token, _ = tokens.new_token()
    for bad in ("", token[:-1], token + "A", token[:-1] + "=", token[:-1] + "\n", "x" * 1000):
        assert not tokens.plausible_token(bad)


# -- which addresses may be requested, in which form ----------------------------------------


@pytest.mark.parametrize(
    ("typed", "normal"),
    [
        ("X@Elsewhere.TEST", "x@elsewhere.test"),
        ("  <x@elsewhere.test>  ", "x@elsewhere.test"),
        ("first.last+tag@sub.elsewhere.test", "first.last+tag@sub.elsewhere.test"),
        ("x@bücher.example", "x@xn--bcher-kva.example"),
        ("x@elsewhere.test.", "x@elsewhere.test"),
        ("o'brien@elsewhere.test", "o'brien@elsewhere.test"),
    ],
)
def test_addresses_are_normalised_as_ownership_compares_them(typed: str, normal: str) -> None:
    assert normalize_request(typed, RULES) == normal


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("x@elsewhere.test\r\nBcc: victim@example.net", "control_characters"),
        ("x@elsewhere.test\n", "control_characters"),
        ("x\x00@elsewhere.test", "control_characters"),
        ("x@else\u200bwhere.test", "control_characters"),  # zero-width space (format char)
        ("x\u2028@elsewhere.test", "control_characters"),
        ("a" * 65 + "@elsewhere.test", "too_long"),
        ("x@" + ".".join(["a" * 60] * 5) + ".test", "too_long"),
        ("x" * 5000, "too_long"),
        ("x@pаypal.com", "confusable"),  # Cyrillic а among Latin letters
        ("x@ｅxample.com", "confusable"),  # fullwidth e
        ("x@ﬁle.example", "confusable"),  # ligature
        ('"x y"@elsewhere.test', "bad_syntax"),
        ('"x@y"@elsewhere.test', "bad_syntax"),
        ("Buy Now <x@elsewhere.test>", "bad_syntax"),
        ('"Visit http://spam.example" <x@elsewhere.test>', "bad_syntax"),
        ("x@elsewhere.test (comment)", "bad_syntax"),
        ("x@y@elsewhere.test", "bad_syntax"),
        ("x@[192.0.2.1]", "bad_syntax"),
        ("x@localhost", "bad_syntax"),
        ("@elsewhere.test", "bad_syntax"),
        ("x@", "bad_syntax"),
        ("", "bad_syntax"),
        ("x..y@elsewhere.test", "bad_syntax"),
        (".x@elsewhere.test", "bad_syntax"),
        ("jöe@elsewhere.test", "bad_syntax"),
        ("x@-bad.test", "bad_syntax"),
        ("x@bad_.test", "bad_syntax"),
        ("x,y@elsewhere.test", "bad_syntax"),
    ],
)
def test_hostile_or_malformed_addresses_are_refused_with_a_stable_code(
    typed: str, code: str
) -> None:
    with pytest.raises(BadAddress) as e:
        normalize_request(typed, RULES)
    assert e.value.code == code
    assert e.value.message and "\n" not in e.value.message


def test_a_254_octet_address_is_accepted_and_255_is_not() -> None:
    domain = ".".join(["d" * 63, "d" * 63, "d" * 63]) + ".test"  # 196 octets
    ok = "l" * (254 - 1 - len(domain)) + "@" + domain
    assert len(ok) == 254 and normalize_request(ok, RULES) == ok
    with pytest.raises(BadAddress) as e:
        normalize_request("l" + ok, RULES)
    assert e.value.code == "too_long"


def test_local_domains_include_their_subdomains_only() -> None:
    doms = ["example.org", "Bücher.Example"]
    assert in_domains("x@example.org", doms)
    assert in_domains("x@mail.example.org", doms)
    assert in_domains("x@xn--bcher-kva.example", doms)
    assert not in_domains("x@notexample.org", doms)
    assert not in_domains("x@example.org.evil.test", doms)
