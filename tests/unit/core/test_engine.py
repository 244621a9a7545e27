"""The decision table, row by row.

First through the pure engine (`policyd.engine.decide` with plain Facts), then through
PolicyService with the embedded file directory, which adds the lookups: profile selection,
range lookup (IPv4-mapped clients), login canonicalisation (realms, case) and ownership
(+extension, @domain, shared addresses).

| situation                                        | answer     | reason                          |
|--------------------------------------------------|------------|---------------------------------|
| authenticated, null sender                       | DUNNO/553  | null_sender                     |
| authenticated, directory cannot answer           | 451 4.3.0  | directory_unavailable           |
| authenticated, sender owned by the login         | accept     | sender_owned                    |
| authenticated, sender not owned / login unknown  | 553 5.7.1  | sender_not_owned                |
| unauthenticated, client in an allocated range    | accept     | allocated_network               |
| ... range limited to other sender domains        | 553 5.7.1  | sender_not_allowed_from_network |
| unauthenticated, outside ranges, submission      | 554 5.7.1  | authentication_required         |
| unauthenticated, outside ranges, mx              | DUNNO      | not_trusted                     |
| ... sender has an owner, protect_local_senders   | 553 5.7.1  | sender_requires_login           |

(answer: the default reply; "accept" is the profile's accept action, DUNNO/553 the
null_sender setting.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from policyd.addresses import AddressRules
from policyd.config import ProfileConfig, config_from_dict
from policyd.core.decision import Decision, Reason, Verdict, to_action
from policyd.core.engine import Facts, Need, decide, needs, needs_network
from policyd.core.request import Request
from policyd.directory.base import DirectoryUnavailable
from policyd.directory.lookups import DirectLookups
from policyd.networks import Networks, Range
from policyd.policy.actions import encode_action
from policyd.policy.service import PolicyService
from policyd.runtime import Runtime, build_runtime

# The default answers, verbatim from the decision table.
DEFER = "451 4.3.0 Temporary lookup failure, please try again later"
NOT_OWNED = "553 5.7.1 Sender address <{sender}> is not owned by user {login}"
NOT_ALLOWED = "553 5.7.1 Sender address <{sender}> is not allowed from network {range}"
AUTH_REQUIRED = (
    "554 5.7.1 Relay access denied: {client} is not in our network; "
    "enable SMTP authentication in your mail client"
)
REQUIRES_LOGIN = "553 5.7.1 Sender address <{sender}> requires SMTP authentication"
NULL_REJECT = "553 5.7.1 The null sender is not allowed for authenticated users"

OUTSIDE = "203.0.113.9"
SUB = ProfileConfig(name="submission", role="submission", ports=(587,))
MX = ProfileConfig(name="mx", role="mx", ports=(25,), protect_local_senders=True)
MX_OPEN = dataclasses.replace(MX, protect_local_senders=False)
SUB_PROTECT = dataclasses.replace(SUB, protect_local_senders=True)
CUSTOMERS = Range("customers", "192.0.2.0/24", None, "ranges:1")
RESTRICTED = Range("restricted", "198.51.100.0/24", frozenset({"example.com"}), "ranges:2")
ALICE = frozenset({"alice@example.org", "alice.smith@example.org", "sales@example.org"})
CAROL = frozenset({"@carol.example"})
NOBODY: frozenset[str] = frozenset()
RULES = AddressRules()
R = Request.from_attrs  # (rows are written as attribute dicts, as Postfix sends them)


def req(**kw: str) -> dict[str, str]:
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": OUTSIDE,
        "sender": "x@example.net",
        "sasl_username": "",
        "recipient": "r@example.net",
    }
    attrs.update(kw)
    return attrs


def auth(login: str, sender: str, **kw: str) -> dict[str, str]:
    return req(sasl_username=login, sasl_method="PLAIN", sender=sender, **kw)


@dataclass
class Row:
    id: str
    attrs: dict[str, str]
    facts: Facts
    profile: ProfileConfig
    verdict: Verdict
    reason: Reason
    action: str
    need: Need
    rules: AddressRules = field(default=RULES)


ROWS = [
    # --- authenticated, null sender
    Row(
        "auth_null_sender",
        auth("alice", ""),
        Facts(),
        SUB,
        Verdict.DUNNO,
        Reason.NULL_SENDER,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "auth_null_sender_reject",
        auth("alice", ""),
        Facts(),
        dataclasses.replace(SUB, null_sender="reject"),
        Verdict.REJECT,
        Reason.NULL_SENDER,
        NULL_REJECT,
        Need.NOTHING,
    ),
    Row(
        "auth_null_sender_in_range",
        auth("alice", "", client_address="192.0.2.1"),
        Facts(network=CUSTOMERS),
        SUB,
        Verdict.DUNNO,
        Reason.NULL_SENDER,
        "DUNNO",
        Need.NOTHING,
    ),
    # --- authenticated, directory cannot answer
    Row(
        "auth_directory_unavailable",
        auth("alice", "alice@example.org"),
        Facts(directory_unavailable=True),
        SUB,
        Verdict.DEFER,
        Reason.DIRECTORY_UNAVAILABLE,
        DEFER,
        Need.ADDRESSES,
    ),
    Row(
        "auth_not_looked_up_defers",
        auth("alice", "alice@example.org"),
        Facts(),
        SUB,
        Verdict.DEFER,
        Reason.DIRECTORY_UNAVAILABLE,
        DEFER,
        Need.ADDRESSES,
    ),
    Row(
        "auth_unavailable_wins_over_stale_owned",
        auth("alice", "alice@example.org"),
        Facts(owned=ALICE, directory_unavailable=True),
        SUB,
        Verdict.DEFER,
        Reason.DIRECTORY_UNAVAILABLE,
        DEFER,
        Need.ADDRESSES,
    ),
    Row(
        "auth_unavailable_in_range",
        auth("alice", "alice@example.org", client_address="192.0.2.1"),
        Facts(network=CUSTOMERS, directory_unavailable=True),
        SUB,
        Verdict.DEFER,
        Reason.DIRECTORY_UNAVAILABLE,
        DEFER,
        Need.ADDRESSES,
    ),
    # --- authenticated, sender owned
    Row(
        "auth_owned",
        auth("alice", "alice@example.org"),
        Facts(owned=ALICE),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    Row(
        "auth_owned_accept_dunno",
        auth("alice", "alice@example.org"),
        Facts(owned=ALICE),
        dataclasses.replace(SUB, accept_action="DUNNO"),
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "DUNNO",
        Need.ADDRESSES,
    ),
    Row(
        "auth_owned_accept_lowercase_relay",
        auth("alice", "alice@example.org"),
        Facts(owned=ALICE),
        dataclasses.replace(SUB, accept_action="relay"),
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "RELAY",
        Need.ADDRESSES,
    ),
    Row(
        "auth_owned_extension",
        auth("alice", "alice+lists@example.org"),
        Facts(owned=ALICE, key_owners={"alice+lists@example.org": NOBODY}),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    Row(
        "auth_owned_mixed_case",
        auth("alice", "Alice.Smith@EXAMPLE.Org"),
        Facts(owned=ALICE),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    Row(
        "auth_owned_domain_entry",
        auth("carol", "anyone+x@Carol.Example"),
        Facts(
            owned=CAROL,
            key_owners={"anyone+x@carol.example": NOBODY, "anyone@carol.example": NOBODY},
        ),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    Row(
        "auth_owned_on_mx_profile",
        auth("alice", "alice@example.org", server_port="25"),
        Facts(owned=ALICE),
        MX,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    Row(
        "auth_login_whitespace_stripped",
        auth("  alice ", "alice@example.org"),
        Facts(owned=ALICE),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    # --- authenticated, not owned / unknown login
    Row(
        "auth_not_owned",
        auth("alice", "bob@example.org"),
        Facts(owned=ALICE),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="bob@example.org", login="alice"),
        Need.ADDRESSES,
    ),
    Row(
        "auth_unknown_login",
        auth("mallory", "alice@example.org"),
        Facts(owned=frozenset()),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="alice@example.org", login="mallory"),
        Need.ADDRESSES,
    ),
    Row(
        "auth_subdomain_of_domain_entry",
        auth("carol", "x@sub.carol.example"),
        Facts(owned=CAROL),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="x@sub.carol.example", login="carol"),
        Need.ADDRESSES,
    ),
    Row(
        "auth_other_delimiter_not_an_extension",
        auth("alice", "alice-x@example.org"),
        Facts(owned=ALICE),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="alice-x@example.org", login="alice"),
        Need.ADDRESSES,
    ),
    Row(
        "auth_extension_with_other_delimiters",
        auth("alice", "alice-x@example.org"),
        Facts(owned=ALICE, key_owners={"alice-x@example.org": NOBODY}),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
        rules=AddressRules(extension_delimiters="+-"),
    ),
    Row(
        "auth_case_sensitive_localpart",
        auth("alice", "Alice@example.org"),
        Facts(owned=ALICE),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="Alice@example.org", login="alice"),
        Need.ADDRESSES,
        rules=AddressRules(case_sensitive_localpart=True),
    ),
    Row(
        "auth_login_stripped_in_reply",
        auth(" mallory ", "alice@example.org"),
        Facts(owned=frozenset()),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="alice@example.org", login="mallory"),
        Need.ADDRESSES,
    ),
    # an authenticated client is always checked, whatever its IP
    Row(
        "auth_in_range_not_owned",
        auth("alice", "bob@example.org", client_address="192.0.2.1"),
        Facts(network=CUSTOMERS, owned=ALICE),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="bob@example.org", login="alice"),
        Need.ADDRESSES,
    ),
    Row(
        "auth_in_restricted_range_owned_other_domain",
        auth("alice", "alice@example.org", client_address="198.51.100.1"),
        Facts(network=RESTRICTED, owned=ALICE),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    # --- not authenticated, allocated range
    Row(
        "unauth_in_range",
        req(client_address="192.0.2.1"),
        Facts(network=CUSTOMERS),
        SUB,
        Verdict.ACCEPT,
        Reason.ALLOCATED_NETWORK,
        "OK",
        Need.NOTHING,
    ),
    Row(
        "unauth_in_range_accept_dunno",
        req(client_address="192.0.2.1"),
        Facts(network=CUSTOMERS),
        dataclasses.replace(SUB, accept_action="DUNNO"),
        Verdict.ACCEPT,
        Reason.ALLOCATED_NETWORK,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "unauth_in_range_mx_protect_needs_no_lookup",
        req(client_address="192.0.2.1", sender="bob@example.org"),
        Facts(network=CUSTOMERS),
        MX,
        Verdict.ACCEPT,
        Reason.ALLOCATED_NETWORK,
        "OK",
        Need.NOTHING,
    ),
    Row(
        "unauth_in_range_null_sender",
        req(client_address="192.0.2.1", sender=""),
        Facts(network=CUSTOMERS),
        SUB,
        Verdict.ACCEPT,
        Reason.ALLOCATED_NETWORK,
        "OK",
        Need.NOTHING,
    ),
    Row(
        "unauth_whitespace_login_is_unauthenticated",
        req(client_address="192.0.2.1", sasl_username="   "),
        Facts(network=CUSTOMERS),
        SUB,
        Verdict.ACCEPT,
        Reason.ALLOCATED_NETWORK,
        "OK",
        Need.NOTHING,
    ),
    # --- not authenticated, range restricted to sender domains
    Row(
        "unauth_restricted_allowed_domain",
        req(client_address="198.51.100.1", sender="x@Example.COM"),
        Facts(network=RESTRICTED),
        SUB,
        Verdict.ACCEPT,
        Reason.ALLOCATED_NETWORK,
        "OK",
        Need.NOTHING,
    ),
    Row(
        "unauth_restricted_other_domain",
        req(client_address="198.51.100.1", sender="x@example.org"),
        Facts(network=RESTRICTED),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_ALLOWED_FROM_NETWORK,
        NOT_ALLOWED.format(sender="x@example.org", range="restricted"),
        Need.NOTHING,
    ),
    Row(
        "unauth_restricted_subdomain",
        req(client_address="198.51.100.1", sender="x@mail.example.com"),
        Facts(network=RESTRICTED),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_ALLOWED_FROM_NETWORK,
        NOT_ALLOWED.format(sender="x@mail.example.com", range="restricted"),
        Need.NOTHING,
    ),
    Row(
        "unauth_restricted_null_sender",
        req(client_address="198.51.100.1", sender=""),
        Facts(network=RESTRICTED),
        SUB,
        Verdict.ACCEPT,
        Reason.ALLOCATED_NETWORK,
        "OK",
        Need.NOTHING,
    ),
    Row(
        "unauth_restricted_sender_without_domain",
        req(client_address="198.51.100.1", sender="postmaster"),
        Facts(network=RESTRICTED),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_ALLOWED_FROM_NETWORK,
        NOT_ALLOWED.format(sender="postmaster", range="restricted"),
        Need.NOTHING,
    ),
    # --- not authenticated, outside every range
    Row(
        "unauth_outside_submission",
        req(),
        Facts(),
        SUB,
        Verdict.REJECT,
        Reason.AUTHENTICATION_REQUIRED,
        AUTH_REQUIRED.format(client=OUTSIDE),
        Need.NOTHING,
    ),
    Row(
        "unauth_outside_submission_null_sender",
        req(sender=""),
        Facts(),
        SUB,
        Verdict.REJECT,
        Reason.AUTHENTICATION_REQUIRED,
        AUTH_REQUIRED.format(client=OUTSIDE),
        Need.NOTHING,
    ),
    Row(
        "unauth_outside_submission_ipv6",
        req(client_address="2001:db8::1"),
        Facts(),
        SUB,
        Verdict.REJECT,
        Reason.AUTHENTICATION_REQUIRED,
        AUTH_REQUIRED.format(client="2001:db8::1"),
        Need.NOTHING,
    ),
    Row(
        "unauth_outside_mx",
        req(),
        Facts(),
        MX_OPEN,
        Verdict.DUNNO,
        Reason.NOT_TRUSTED,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "unauth_outside_mx_protect_not_owned",
        req(),
        Facts(sender_owners=frozenset()),
        MX,
        Verdict.DUNNO,
        Reason.NOT_TRUSTED,
        "DUNNO",
        Need.OWNERS,
    ),
    Row(
        "unauth_outside_mx_null_sender",
        req(sender=""),
        Facts(),
        MX,
        Verdict.DUNNO,
        Reason.NOT_TRUSTED,
        "DUNNO",
        Need.NOTHING,
    ),
    # --- not authenticated, outside ranges, sender owned by a login, protect_local_senders
    Row(
        "unauth_outside_protected_sender",
        req(sender="bob@example.org"),
        Facts(sender_owners=frozenset({"bob"})),
        MX,
        Verdict.REJECT,
        Reason.SENDER_REQUIRES_LOGIN,
        REQUIRES_LOGIN.format(sender="bob@example.org"),
        Need.OWNERS,
    ),
    Row(
        "unauth_outside_protected_sender_submission",
        req(sender="bob@example.org"),
        Facts(sender_owners=frozenset({"bob"})),
        SUB_PROTECT,
        Verdict.REJECT,
        Reason.SENDER_REQUIRES_LOGIN,
        REQUIRES_LOGIN.format(sender="bob@example.org"),
        Need.OWNERS,
    ),
    Row(
        "unauth_outside_protect_unowned_submission",
        req(sender="x@example.net"),
        Facts(sender_owners=frozenset()),
        SUB_PROTECT,
        Verdict.REJECT,
        Reason.AUTHENTICATION_REQUIRED,
        AUTH_REQUIRED.format(client=OUTSIDE),
        Need.OWNERS,
    ),
    Row(
        "unauth_protect_directory_unavailable",
        req(sender="bob@example.org"),
        Facts(directory_unavailable=True),
        MX,
        Verdict.DEFER,
        Reason.DIRECTORY_UNAVAILABLE,
        DEFER,
        Need.OWNERS,
    ),
    Row(
        "unauth_protect_not_looked_up_defers",
        req(sender="bob@example.org"),
        Facts(),
        MX,
        Verdict.DEFER,
        Reason.DIRECTORY_UNAVAILABLE,
        DEFER,
        Need.OWNERS,
    ),
    # --- requests that are not checked
    Row(
        "state_not_checked",
        auth("alice", "bob@example.org", protocol_state="MAIL"),
        Facts(),
        SUB,
        Verdict.DUNNO,
        Reason.NOT_CHECKED_STATE,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "state_end_of_message_not_checked",
        req(protocol_state="END-OF-MESSAGE"),
        Facts(),
        SUB,
        Verdict.DUNNO,
        Reason.NOT_CHECKED_STATE,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "state_missing",
        {k: v for k, v in req().items() if k != "protocol_state"},
        Facts(),
        SUB,
        Verdict.DUNNO,
        Reason.NOT_CHECKED_STATE,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "state_lowercase_is_checked",
        req(protocol_state="rcpt"),
        Facts(),
        SUB,
        Verdict.REJECT,
        Reason.AUTHENTICATION_REQUIRED,
        AUTH_REQUIRED.format(client=OUTSIDE),
        Need.NOTHING,
    ),
    Row(
        "state_configured_mail",
        req(protocol_state="MAIL"),
        Facts(),
        dataclasses.replace(SUB, check_state="MAIL"),
        Verdict.REJECT,
        Reason.AUTHENTICATION_REQUIRED,
        AUTH_REQUIRED.format(client=OUTSIDE),
        Need.NOTHING,
    ),
    Row(
        "state_configured_mail_rcpt_not_checked",
        req(),
        Facts(),
        dataclasses.replace(SUB, check_state="MAIL"),
        Verdict.DUNNO,
        Reason.NOT_CHECKED_STATE,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "wrong_request_type",
        auth("alice", "bob@example.org", request="junk"),
        Facts(),
        SUB,
        Verdict.DUNNO,
        Reason.WRONG_REQUEST,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "request_type_missing",
        {k: v for k, v in req().items() if k != "request"},
        Facts(),
        SUB,
        Verdict.DUNNO,
        Reason.WRONG_REQUEST,
        "DUNNO",
        Need.NOTHING,
    ),
    Row(
        "request_type_case_matters",
        req(request="SMTPD_ACCESS_POLICY"),
        Facts(),
        SUB,
        Verdict.DUNNO,
        Reason.WRONG_REQUEST,
        "DUNNO",
        Need.NOTHING,
    ),
    # --- the most specific key that has any owner decides (Postfix's smtpd_sender_login_maps)
    Row(
        "auth_extension_registered_to_another_login",
        auth("alice", "alice+boss@example.org"),
        Facts(owned=ALICE, key_owners={"alice+boss@example.org": frozenset({"bob"})}),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="alice+boss@example.org", login="alice"),
        Need.ADDRESSES,
    ),
    Row(
        "auth_delimiter_makes_another_users_address_look_like_an_extension",
        auth("alice", "first-last@example.org"),
        Facts(
            owned=frozenset({"first@example.org"}),
            key_owners={"first-last@example.org": frozenset({"bob"})},
        ),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="first-last@example.org", login="alice"),
        Need.ADDRESSES,
        rules=AddressRules(extension_delimiters="+-"),
    ),
    Row(
        "auth_domain_owner_sending_as_an_address_registered_to_another_login",
        auth("carol", "dave@carol.example"),
        Facts(owned=CAROL, key_owners={"dave@carol.example": frozenset({"dave"})}),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="dave@carol.example", login="carol"),
        Need.ADDRESSES,
    ),
    Row(
        "auth_shared_key_lists_the_login_among_its_owners",
        auth("alice", "alice+x@example.org"),
        Facts(owned=ALICE, key_owners={"alice+x@example.org": frozenset({"alice", "bob"})}),
        SUB,
        Verdict.ACCEPT,
        Reason.SENDER_OWNED,
        "OK",
        Need.ADDRESSES,
    ),
    Row(
        "auth_more_specific_key_not_looked_up_defers",
        auth("carol", "dave@carol.example"),
        Facts(owned=CAROL),
        SUB,
        Verdict.DEFER,
        Reason.DIRECTORY_UNAVAILABLE,
        DEFER,
        Need.ADDRESSES,
    ),
    Row(
        "auth_owning_no_key_is_refused_without_a_reverse_lookup",
        auth("alice", "mallory+x@example.net"),
        Facts(owned=ALICE),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="mallory+x@example.net", login="alice"),
        Need.ADDRESSES,
    ),
    # --- placeholders are sanitised: no control characters reach Postfix
    Row(
        "reply_sanitised",
        auth("al\tice", "bob\x7f@example.org"),
        Facts(owned=frozenset()),
        SUB,
        Verdict.REJECT,
        Reason.SENDER_NOT_OWNED,
        NOT_OWNED.format(sender="bob?@example.org", login="al?ice"),
        Need.ADDRESSES,
    ),
]


def _check(row: Row, profile: ProfileConfig, d: Decision) -> None:
    assert isinstance(d, Decision)
    action = to_action(d)
    encode_action(action)  # every answer is a valid Postfix action
    if profile.mode == "warn" and row.verdict is Verdict.REJECT:
        # roll-out mode: DUNNO, saying what would have been answered
        assert (d.verdict, d.reason, action) == (Verdict.DUNNO, row.reason, "DUNNO")
        assert d.would_have == row.action
        return
    # DEFER is never softened by warn mode; ACCEPT and DUNNO are unchanged
    assert (d.verdict, d.reason, action) == (row.verdict, row.reason, row.action)
    assert d.would_have == ""
    if d.verdict is Verdict.REJECT:
        assert d.code in ("553", "554") and d.enhanced_code == "5.7.1"
    if d.verdict is Verdict.DEFER:
        assert d.code == "451" and d.enhanced_code == "4.3.0"


@pytest.mark.parametrize("mode", ["enforce", "warn"])
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_decision_table(row: Row, mode: Literal["enforce", "warn"]) -> None:
    profile = dataclasses.replace(row.profile, mode=mode)
    _check(row, profile, decide(R(row.attrs), profile, row.facts, row.rules))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_needs_matches_the_facts_decide_uses(row: Row) -> None:
    assert needs(R(row.attrs), row.profile, row.facts.network) is row.need


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_network_is_skipped_only_where_decide_ignores_it(row: Row) -> None:
    # The service skips the range lookup when needs_network() says so; that must never change
    # a decision: with or without a range (open or restricted) the answer is the same.
    if needs_network(R(row.attrs)):
        return
    other = Range("other", "198.51.100.0/24", frozenset({"elsewhere.test"}), "ranges:9")
    want = decide(R(row.attrs), row.profile, row.facts, row.rules)
    for network in (None, CUSTOMERS, other):
        f = row.facts
        facts = Facts(network, f.owned, f.sender_owners, f.directory_unavailable, f.key_owners)
        assert decide(R(row.attrs), row.profile, facts, row.rules) == want
        assert needs(R(row.attrs), row.profile, network) is row.need


def test_rows_cover_every_reason_of_the_table() -> None:
    policy_reasons = {
        Reason.NULL_SENDER,
        Reason.DIRECTORY_UNAVAILABLE,
        Reason.SENDER_OWNED,
        Reason.SENDER_NOT_OWNED,
        Reason.ALLOCATED_NETWORK,
        Reason.SENDER_NOT_ALLOWED_FROM_NETWORK,
        Reason.AUTHENTICATION_REQUIRED,
        Reason.NOT_TRUSTED,
        Reason.SENDER_REQUIRES_LOGIN,
        Reason.NOT_CHECKED_STATE,
        Reason.WRONG_REQUEST,
    }
    assert {r.reason for r in ROWS} == policy_reasons


def test_a_needed_fact_that_is_missing_never_passes() -> None:
    """For every row needing a lookup, deciding without its result defers; never a pass."""
    for row in ROWS:
        if row.need is Need.NOTHING:
            continue
        for mode in ("enforce", "warn"):
            profile = dataclasses.replace(row.profile, mode=mode)
            d = decide(R(row.attrs), profile, Facts(network=row.facts.network), row.rules)
            assert d.verdict is Verdict.DEFER, (row.id, mode, d)
            d = decide(
                R(row.attrs),
                profile,
                Facts(network=row.facts.network, directory_unavailable=True),
                row.rules,
            )
            assert d.verdict is Verdict.DEFER, (row.id, mode, d)


def test_custom_reply_templates() -> None:
    replies = dataclasses.replace(
        SUB.replies,
        sender_not_owned="550 5.7.60 {login} may not use <{sender}> (client {client})",
        directory_unavailable="450 4.4.3 Directory down for {login}",
    )
    profile = dataclasses.replace(SUB, replies=replies)
    d = decide(R(auth("alice", "bob@example.org")), profile, Facts(owned=ALICE), RULES)
    assert to_action(d) == f"550 5.7.60 alice may not use <bob@example.org> (client {OUTSIDE})"
    d = decide(
        R(auth("alice", "bob@example.org")), profile, Facts(directory_unavailable=True), RULES
    )
    assert to_action(d) == "450 4.4.3 Directory down for alice"


def test_long_sender_is_cut_to_a_valid_reply() -> None:
    d = decide(R(auth("alice", "x" * 2000 + "@example.org")), SUB, Facts(owned=ALICE), RULES)
    action = to_action(d)
    assert action.startswith("553 5.7.1 Sender address <xxx")
    assert len(action) <= 450
    encode_action(action)


# --------------------------------------------------------------------------------------------
# The same table through PolicyService and the embedded directory

SENDERS = """\
alice:       alice@example.org, alice.smith@example.org
bob:         bob@example.org
carol:       @carol.example
alice, bob:  sales@example.org
"""

RANGES = """\
192.0.2.0/24      customers
198.51.100.0/24   restricted   domains=example.com
2001:db8::/32     v6customers
"""


def service_for(tmp_path: Path, extra: Mapping[str, Any] | None = None) -> PolicyService:
    (tmp_path / "senders.txt").write_text(SENDERS)
    (tmp_path / "ranges.txt").write_text(RANGES)
    data: dict[str, Any] = {
        "networks": {"files": ["ranges.txt"]},
        "directory": {"backend": "file", "file": "senders.txt"},
        "profiles": {
            "submission": {"role": "submission", "ports": [587]},
            "mx": {"role": "mx", "ports": [25], "protect_local_senders": True},
        },
    }
    for k, v in (extra or {}).items():
        data[k] = {**data.get(k, {}), **v}
    config = config_from_dict(data, source="test.toml", base_dir=tmp_path)
    return PolicyService(build_runtime(config))


def ask(service: PolicyService, attrs: Mapping[str, str]) -> tuple[str, str, str]:
    profile, result = service.decide_now(R(attrs))
    assert isinstance(result, Decision), "the embedded directory answers at once"
    encode_action(to_action(result))
    return profile.name, to_action(result), result.reason.value


def p587(**kw: str) -> dict[str, str]:
    return req(server_port="587", **kw)


def p25(**kw: str) -> dict[str, str]:
    return req(server_port="25", **kw)


SERVICE_ROWS: list[tuple[str, dict[str, str], tuple[str, str, str]]] = [
    (
        "owned",
        p587(sasl_username="alice", sender="alice@example.org"),
        ("submission", "OK", "sender_owned"),
    ),
    (
        "owned_mixed_case_login_and_sender",
        p587(sasl_username="ALICE", sender="Alice.Smith@EXAMPLE.org"),
        ("submission", "OK", "sender_owned"),
    ),
    (
        "owned_extension",
        p587(sasl_username="alice", sender="alice+tag@example.org"),
        ("submission", "OK", "sender_owned"),
    ),
    (
        "owned_shared_by_alice",
        p587(sasl_username="alice", sender="sales@example.org"),
        ("submission", "OK", "sender_owned"),
    ),
    (
        "owned_shared_by_bob",
        p587(sasl_username="bob", sender="Sales+q@example.org"),
        ("submission", "OK", "sender_owned"),
    ),
    (
        "owned_domain",
        p587(sasl_username="carol", sender="anyone@carol.example"),
        ("submission", "OK", "sender_owned"),
    ),
    (
        "owned_domain_mixed_case",
        p587(sasl_username="carol", sender="Any.One@CAROL.Example"),
        ("submission", "OK", "sender_owned"),
    ),
    (
        "not_owned_subdomain",
        p587(sasl_username="carol", sender="x@sub.carol.example"),
        (
            "submission",
            NOT_OWNED.format(sender="x@sub.carol.example", login="carol"),
            "sender_not_owned",
        ),
    ),
    (
        "not_owned_other_user",
        p587(sasl_username="bob", sender="alice@example.org"),
        (
            "submission",
            NOT_OWNED.format(sender="alice@example.org", login="bob"),
            "sender_not_owned",
        ),
    ),
    (
        "unknown_login",
        p587(sasl_username="mallory", sender="alice@example.org"),
        (
            "submission",
            NOT_OWNED.format(sender="alice@example.org", login="mallory"),
            "sender_not_owned",
        ),
    ),
    (
        "login_with_realm_but_no_realms_configured",
        p587(sasl_username="alice@example.org", sender="alice@example.org"),
        (
            "submission",
            NOT_OWNED.format(sender="alice@example.org", login="alice@example.org"),
            "sender_not_owned",
        ),
    ),
    (
        "null_sender_authenticated",
        p587(sasl_username="alice", sender=""),
        ("submission", "DUNNO", "null_sender"),
    ),
    (
        "authenticated_in_range_not_owned",
        p587(sasl_username="alice", sender="bob@example.org", client_address="192.0.2.5"),
        (
            "submission",
            NOT_OWNED.format(sender="bob@example.org", login="alice"),
            "sender_not_owned",
        ),
    ),
    (
        "authenticated_ipv4_mapped_in_range_not_owned",
        p587(sasl_username="alice", sender="bob@example.org", client_address="::ffff:192.0.2.5"),
        (
            "submission",
            NOT_OWNED.format(sender="bob@example.org", login="alice"),
            "sender_not_owned",
        ),
    ),
    ("in_range", p587(client_address="192.0.2.5"), ("submission", "OK", "allocated_network")),
    (
        "in_range_ipv4_mapped",
        p587(client_address="::ffff:192.0.2.5"),
        ("submission", "OK", "allocated_network"),
    ),
    (
        "in_range_ipv6",
        p587(client_address="2001:db8:1::25"),
        ("submission", "OK", "allocated_network"),
    ),
    (
        "outside_ipv4_mapped",
        p587(client_address="::ffff:203.0.113.9"),
        (
            "submission",
            AUTH_REQUIRED.format(client="::ffff:203.0.113.9"),
            "authentication_required",
        ),
    ),
    (
        "outside_unknown_client",
        p587(client_address="unknown"),
        ("submission", AUTH_REQUIRED.format(client="unknown"), "authentication_required"),
    ),
    (
        "restricted_allowed",
        p587(client_address="198.51.100.9", sender="x@EXAMPLE.com"),
        ("submission", "OK", "allocated_network"),
    ),
    (
        "restricted_other_domain",
        p587(client_address="198.51.100.9", sender="x@example.org"),
        (
            "submission",
            NOT_ALLOWED.format(sender="x@example.org", range="restricted"),
            "sender_not_allowed_from_network",
        ),
    ),
    (
        "restricted_ipv4_mapped_other_domain",
        p587(client_address="::ffff:198.51.100.9", sender="x@example.org"),
        (
            "submission",
            NOT_ALLOWED.format(sender="x@example.org", range="restricted"),
            "sender_not_allowed_from_network",
        ),
    ),
    (
        "restricted_null_sender",
        p587(client_address="198.51.100.9", sender=""),
        ("submission", "OK", "allocated_network"),
    ),
    (
        "outside_submission",
        p587(),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    ("outside_mx", p25(), ("mx", "DUNNO", "not_trusted")),
    ("outside_mx_null_sender", p25(sender=""), ("mx", "DUNNO", "not_trusted")),
    (
        "mx_protected_sender",
        p25(sender="bob@example.org"),
        ("mx", REQUIRES_LOGIN.format(sender="bob@example.org"), "sender_requires_login"),
    ),
    (
        "mx_protected_sender_extension_case",
        p25(sender="Bob+x@Example.org"),
        ("mx", REQUIRES_LOGIN.format(sender="Bob+x@Example.org"), "sender_requires_login"),
    ),
    (
        "mx_protected_domain",
        p25(sender="whoever@carol.example"),
        ("mx", REQUIRES_LOGIN.format(sender="whoever@carol.example"), "sender_requires_login"),
    ),
    (
        "mx_protected_shared",
        p25(sender="sales@example.org"),
        ("mx", REQUIRES_LOGIN.format(sender="sales@example.org"), "sender_requires_login"),
    ),
    (
        "mx_in_range_protected_sender",
        p25(sender="bob@example.org", client_address="192.0.2.5"),
        ("mx", "OK", "allocated_network"),
    ),
    (
        "mx_authenticated_owned",
        p25(sasl_username="bob", sender="bob@example.org"),
        ("mx", "OK", "sender_owned"),
    ),
    (
        "not_checked_state",
        p587(protocol_state="DATA"),
        ("submission", "DUNNO", "not_checked_state"),
    ),
    ("wrong_request", p587(request="junk"), ("submission", "DUNNO", "wrong_request")),
    # profile selection: policy_context, then server_port, then the default
    (
        "context_beats_port",
        req(policy_context="mx", server_port="587"),
        ("mx", "DUNNO", "not_trusted"),
    ),
    (
        "context_submission_on_port_25",
        req(policy_context="submission", server_port="25"),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    (
        "unknown_context_falls_back_to_port",
        req(policy_context="nope", server_port="25"),
        ("mx", "DUNNO", "not_trusted"),
    ),
    (
        "unknown_context_no_port_default",
        req(policy_context="nope", server_port=""),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    (
        "unlisted_port_default",
        req(server_port="2525"),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    (
        "no_port_attribute_default",
        {k: v for k, v in req().items() if k != "server_port"},
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    (
        "non_ascii_digit_port_default",
        req(server_port="2\u00b2"),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    (
        "arabic_digits_port_default",
        req(server_port="\u0662\u0665"),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    (
        "huge_port_default",
        req(server_port="9" * 5000),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
    (
        "port_with_spaces_default",
        req(server_port=" 25"),
        ("submission", AUTH_REQUIRED.format(client=OUTSIDE), "authentication_required"),
    ),
]


@pytest.mark.parametrize(
    ("attrs", "want"), [r[1:] for r in SERVICE_ROWS], ids=[r[0] for r in SERVICE_ROWS]
)
def test_service_table(tmp_path: Path, attrs: dict[str, str], want: tuple[str, str, str]) -> None:
    assert ask(service_for(tmp_path), attrs) == want


def test_service_default_profile(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"policy": {"default_profile": "mx"}})
    assert ask(service, req(server_port="2525")) == ("mx", "DUNNO", "not_trusted")
    assert ask(service, req(server_port="587"))[0] == "submission"


@pytest.mark.parametrize(
    ("login", "want"),
    [
        ("alice@example.org", "OK"),
        ("ALICE@Example.Org", "OK"),
        ("alice", "OK"),
        (
            "alice@other.example",
            NOT_OWNED.format(sender="alice@example.org", login="alice@other.example"),
        ),
    ],
)
def test_service_realms(tmp_path: Path, login: str, want: str) -> None:
    service = service_for(tmp_path, {"addresses": {"realms": ["example.org"]}})
    assert ask(service, p587(sasl_username=login, sender="alice@example.org"))[1] == want


def test_service_warn_mode(tmp_path: Path) -> None:
    service = service_for(tmp_path, {"profiles": {"submission": {"mode": "warn", "ports": [587]}}})
    profile, result = service.decide_now(R(p587()))
    assert isinstance(result, Decision)
    assert (to_action(result), result.reason) == ("DUNNO", Reason.AUTHENTICATION_REQUIRED)
    assert result.would_have == AUTH_REQUIRED.format(client=OUTSIDE)
    assert ask(service, p587(sasl_username="alice", sender="alice@example.org"))[1] == "OK"


def test_service_accept_action_dunno(tmp_path: Path) -> None:
    service = service_for(
        tmp_path, {"profiles": {"submission": {"accept_action": "DUNNO", "ports": [587]}}}
    )
    assert ask(service, p587(sasl_username="alice", sender="alice@example.org")) == (
        "submission",
        "DUNNO",
        "sender_owned",
    )
    assert ask(service, p587(client_address="192.0.2.1")) == (
        "submission",
        "DUNNO",
        "allocated_network",
    )


def test_service_null_sender_reject(tmp_path: Path) -> None:
    service = service_for(
        tmp_path, {"profiles": {"submission": {"null_sender": "reject", "ports": [587]}}}
    )
    assert ask(service, p587(sasl_username="alice", sender="")) == (
        "submission",
        NULL_REJECT,
        "null_sender",
    )
    # an unauthenticated null sender from a range is still let through
    assert ask(service, p587(client_address="192.0.2.1", sender=""))[1] == "OK"


class _DownDirectory:
    """An in-memory directory that cannot answer."""

    blocking = False

    def addresses_of(self, login: str) -> frozenset[str]:
        raise DirectoryUnavailable("down")

    def owners_of(self, address: str) -> frozenset[str]:
        raise DirectoryUnavailable("down")

    def identity_of(self, login: str) -> frozenset[str]:
        raise DirectoryUnavailable("down")

    def close(self) -> None:
        pass


def test_service_directory_down_defers(tmp_path: Path) -> None:
    base = service_for(tmp_path).runtime
    down = _DownDirectory()
    rt = Runtime(base.config, base.networks, base.rules, down, DirectLookups(down))
    service = PolicyService(rt)
    # protect_local_senders (mx) with the directory down: 451, never a pass
    assert ask(service, p25(sender="bob@example.org")) == ("mx", DEFER, "directory_unavailable")
    assert ask(service, p25(sender="stranger@example.net")) == (
        "mx",
        DEFER,
        "directory_unavailable",
    )
    # authenticated: 451
    assert ask(service, p587(sasl_username="alice", sender="alice@example.org")) == (
        "submission",
        DEFER,
        "directory_unavailable",
    )
    # warn mode does not soften it
    warn = dataclasses.replace(base.config.profiles["mx"], mode="warn")
    profiles = {**base.config.profiles, "mx": warn}
    rt2 = dataclasses.replace(rt, config=dataclasses.replace(base.config, profiles=profiles))
    assert ask(PolicyService(rt2), p25(sender="bob@example.org")) == (
        "mx",
        DEFER,
        "directory_unavailable",
    )
    # requests that need no lookup are unaffected
    assert ask(service, p25(sender="bob@example.org", client_address="192.0.2.1"))[1] == "OK"
    assert ask(service, p587())[1] == AUTH_REQUIRED.format(client=OUTSIDE)
    assert ask(service, p587(sasl_username="alice", sender=""))[1] == "DUNNO"
    assert ask(service, p25(sender=""))[1] == "DUNNO"


def test_networks_in_service_match_ranges_file(tmp_path: Path) -> None:
    service = service_for(tmp_path)
    nets: Networks = service.runtime.networks
    r = nets.lookup("::ffff:198.51.100.200")
    assert r is not None and r.label == "restricted" and r.domains == frozenset({"example.com"})


# --- Postfix's rule for the fallback keys: the most specific key that has ANY owner decides ---
# (issue: alice could send as bob's alice+boss@, john@ as john-smith@ with "-" as delimiter, and
# a domain owner as any user's address in that domain)

SPOOF_SENDERS = """\
alice:  alice@example.org
bob:    alice+boss@example.org
first:  first@example.org
bob2:   first-last@example.org
carol:  @carol.example
dave:   dave@carol.example
"""

SPOOF_ROWS = [
    ("alice", "alice+boss@example.org", "+", "sender_not_owned"),
    ("bob", "alice+boss@example.org", "+", "sender_owned"),
    ("alice", "alice+other@example.org", "+", "sender_owned"),
    ("first", "first-last@example.org", "+-", "sender_not_owned"),
    ("bob2", "first-last@example.org", "+-", "sender_owned"),
    ("first", "first-other@example.org", "+-", "sender_owned"),
    ("carol", "dave@carol.example", "+", "sender_not_owned"),
    ("carol", "dave+x@carol.example", "+", "sender_not_owned"),
    ("dave", "dave+x@carol.example", "+", "sender_owned"),
    ("carol", "anyone@carol.example", "+", "sender_owned"),
]


@pytest.mark.parametrize(("login", "sender", "delimiters", "reason"), SPOOF_ROWS)
def test_a_fallback_key_never_overrides_a_more_specific_key_registered_to_another_login(
    tmp_path: Path, login: str, sender: str, delimiters: str, reason: str
) -> None:
    (tmp_path / "spoof.txt").write_text(SPOOF_SENDERS)
    service = service_for(
        tmp_path,
        {
            "directory": {"file": "spoof.txt"},
            "addresses": {"extension_delimiters": delimiters},
        },
    )
    assert ask(service, p587(sasl_username=login, sender=sender))[2] == reason


def test_protect_local_senders_finds_the_owner_of_the_most_specific_key(tmp_path: Path) -> None:
    (tmp_path / "spoof.txt").write_text(SPOOF_SENDERS)
    service = service_for(tmp_path, {"directory": {"file": "spoof.txt"}})
    for sender in ("alice+boss@example.org", "dave@carol.example", "anyone@carol.example"):
        assert ask(service, p25(sender=sender)) == (
            "mx",
            REQUIRES_LOGIN.format(sender=sender),
            "sender_requires_login",
        )
    assert ask(service, p25(sender="nobody@example.net"))[2] == "not_trusted"
