"""The decision: request + facts -> Decision. Pure: no sockets, no directory, no clock.

The front ends (policy server, milter, CLI) first ask `needs()` which slow fact the request
needs, gather it, then call `decide()`. Every rule lives here, so every rule is testable with
plain values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Final

from policyd.addresses import (
    AddressRules,
    canonical_login,
    for_wider_keys,
    keys_to_resolve,
    owns,
    sender_domain,
    sender_key,
)
from policyd.core.decision import Decision, Reason, Verdict
from policyd.core.profile import ProfileConfig
from policyd.core.replies import render
from policyd.core.request import Request
from policyd.networks import Range

POLICY_REQUEST: Final = "smtpd_access_policy"


class Need(enum.Enum):
    NOTHING = "nothing"
    ADDRESSES = "addresses_of(login)"
    OWNERS = "owners_of(sender)"


class Facts:
    """What the front end found out. `None` means "not looked up". Read-only once built.

    Built for every request: a plain class with slots, not a NamedTuple (whose constructor is
    interpreted Python even in the compiled build) nor a frozen dataclass (slower to build in
    the pure one); compiled, it is a native class.
    """

    __slots__ = ("network", "owned", "sender_owners", "directory_unavailable", "key_owners")

    def __init__(
        self,
        network: Range | None = None,
        owned: frozenset[str] | None = None,
        sender_owners: frozenset[str] | None = None,
        directory_unavailable: bool = False,
        key_owners: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.network: Final = network
        #: addresses_of(login), when Need.ADDRESSES
        self.owned: Final = owned
        #: owners_of(sender), when Need.OWNERS
        self.sender_owners: Final = sender_owners
        #: the directory could not answer the lookup that was needed
        self.directory_unavailable: Final = directory_unavailable
        #: owners of the sender's more specific keys, when `keys_needed` named any
        self.key_owners: Final = key_owners

    def __repr__(self) -> str:
        return (
            f"Facts(network={self.network!r}, owned={self.owned!r}, "
            f"sender_owners={self.sender_owners!r}, "
            f"directory_unavailable={self.directory_unavailable!r}, "
            f"key_owners={self.key_owners!r})"
        )


def needs_network(req: Request) -> bool:
    """Whether decide() looks at Facts.network: not for an authenticated client (the login
    rules apply wherever it connects from), so the range lookup can be skipped."""
    return not req.sasl_username.strip()


def needs(req: Request, profile: ProfileConfig, network: Range | None) -> Need:
    """Which directory lookup decide() will need for this request. (`network` matters only
    when needs_network(req); pass None otherwise.)"""
    if req.request != POLICY_REQUEST:
        return Need.NOTHING
    if req.protocol_state.upper() != profile.check_state:
        return Need.NOTHING
    sender = req.sender
    if req.sasl_username.strip():
        return Need.ADDRESSES if sender else Need.NOTHING
    if network is None and profile.protect_local_senders and sender:
        return Need.OWNERS
    return Need.NOTHING


def keys_needed(sender: str, owned: frozenset[str], rules: AddressRules) -> tuple[str, ...]:
    """After Need.ADDRESSES: the keys of `sender` whose owners decide() also needs (in
    Facts.key_owners). Empty in the common case, a login sending as an address it owns."""
    if _owned_exactly(sender, owned, rules):
        return ()
    return keys_to_resolve(for_wider_keys(owned), sender, rules)


def _owned_exactly(sender: str, owned: frozenset[str], rules: AddressRules) -> bool:
    """Whether the login owns the sender's most specific key. The raw sender first (Postfix
    usually passes the sender as it is stored): a raw hit is a key hit unless the sender has a
    routing form ("%", "!", a source route), which Postfix resolves to another address."""
    if sender in owned and "%" not in sender and "!" not in sender and sender[:1] != "@":
        return True
    return sender_key(sender, rules) in owned


def _owned(
    login: str, sender: str, facts: Facts, owned: frozenset[str], rules: AddressRules
) -> bool | None:
    """Whether `login` owns `sender` (None: a needed key's owners were not looked up). An
    exact-only address (verified by mail) counts for itself, never for the wider keys."""
    wide = for_wider_keys(owned)
    if wide is not owned and sender_key(sender, rules) in owned:
        return True
    return owns(login, wide, sender, facts.key_owners or _NO_OWNERS, rules)


_NO_OWNERS: Final[Mapping[str, frozenset[str]]] = {}


def decide(
    req: Request,
    profile: ProfileConfig,
    facts: Facts,
    rules: AddressRules,
) -> Decision:
    """The policy, for the request `req` and the facts found for it."""
    if req.request != POLICY_REQUEST:
        return _DUNNO_WRONG_REQUEST
    if req.protocol_state.upper() != profile.check_state:
        return _DUNNO_NOT_CHECKED_STATE

    replies = profile.replies
    sender = req.sender
    login = req.sasl_username.strip()
    client = req.client_address
    # (the template values built only for a reply: most requests are accepted)
    if login:
        if not sender:
            if profile.null_sender == "reject":
                return _reject(
                    profile, Reason.NULL_SENDER, _say(replies.null_sender, sender, login, client)
                )
            return _DUNNO_NULL_SENDER
        owned = facts.owned
        if facts.directory_unavailable or owned is None:
            return _defer(
                Reason.DIRECTORY_UNAVAILABLE,
                _say(replies.directory_unavailable, sender, login, client),
            )
        # The exact address owned by the login is the common case: checked without building
        # the other keys. Otherwise the most specific key that has any owner decides.
        if _owned_exactly(sender, owned, rules):
            return _accept(profile, Reason.SENDER_OWNED)
        is_owner = _owned(canonical_login(login, rules), sender, facts, owned, rules)
        if is_owner is None:
            return _defer(
                Reason.DIRECTORY_UNAVAILABLE,
                _say(replies.directory_unavailable, sender, login, client),
            )
        if is_owner:
            return _accept(profile, Reason.SENDER_OWNED)
        return _reject(
            profile, Reason.SENDER_NOT_OWNED, _say(replies.sender_not_owned, sender, login, client)
        )

    network = facts.network
    if network is not None:
        # The null sender (bounces, DSNs) has no domain to restrict; it is let through.
        if (
            network.domains is not None
            and sender
            and sender_domain(sender, rules) not in network.domains
        ):
            return _reject(
                profile,
                Reason.SENDER_NOT_ALLOWED_FROM_NETWORK,
                render(
                    replies.sender_not_allowed_from_network,
                    {"sender": sender, "login": login, "client": client, "range": network.label},
                ),
            )
        return _accept(profile, Reason.ALLOCATED_NETWORK)

    if profile.protect_local_senders and sender:
        if facts.directory_unavailable or facts.sender_owners is None:
            return _defer(
                Reason.DIRECTORY_UNAVAILABLE,
                _say(replies.directory_unavailable, sender, login, client),
            )
        if facts.sender_owners:
            return _reject(
                profile,
                Reason.SENDER_REQUIRES_LOGIN,
                _say(replies.sender_requires_login, sender, login, client),
            )

    if profile.role == "submission":
        return _reject(
            profile,
            Reason.AUTHENTICATION_REQUIRED,
            _say(replies.authentication_required, sender, login, client),
        )
    return _DUNNO_NOT_TRUSTED


def decide_header_from(
    login: str,
    mailboxes: Sequence[str] | None,
    profile: ProfileConfig,
    owned: frozenset[str] | None,
    rules: AddressRules,
    *,
    client: str = "",
    sender: str = "",
    directory_unavailable: bool = False,
    owners: Mapping[str, frozenset[str]] | None = None,
    key_owners: Mapping[str, frozenset[str]] | None = None,
    sources: Sequence[tuple[str, str]] = (),
    display: Sequence[tuple[str, str]] = (),
) -> Decision:
    """The milter's rule: every mailbox of From:, Sender:, Resent-From: and Resent-Sender: must
    be owned by the login, and so must every address-like text a client could show instead:
    in a display name or a comment (`display`), unless the profile allows them.

    `mailboxes` is None when the From: header is missing or cannot be parsed. For an
    unauthenticated session (login "") only protect_local_senders applies, with `owners`
    mapping each mailbox to its owners (None when not looked up). For a login, a mailbox is
    owned by the envelope rule (`addresses.owns`): `key_owners` holds the owners of the keys
    `keys_needed` names for each mailbox and display address. `sources` and `display` are
    (header name, address) pairs (headers.AuthorCheck): the reply names the header.
    """
    replies = profile.replies
    values = {"login": login, "client": client, "sender": sender}
    if not login:
        if not profile.protect_local_senders or not mailboxes:
            return Decision(Verdict.DUNNO, Reason.NOT_AUTHENTICATED)
        if directory_unavailable or owners is None:
            return _defer(
                Reason.DIRECTORY_UNAVAILABLE, render(replies.directory_unavailable, values)
            )
        for box in mailboxes:
            if owners.get(box):
                return _reject(
                    profile,
                    Reason.SENDER_REQUIRES_LOGIN,
                    render(replies.sender_requires_login, {**values, "sender": box}),
                )
        return Decision(Verdict.DUNNO, Reason.NOT_AUTHENTICATED)
    if not mailboxes:
        return _reject(
            profile, Reason.HEADER_FROM_INVALID, render(replies.header_from_invalid, values)
        )
    if directory_unavailable or owned is None:
        return _defer(Reason.DIRECTORY_UNAVAILABLE, render(replies.directory_unavailable, values))
    facts = Facts(owned=owned, key_owners=key_owners)
    who = canonical_login(login, rules)
    checks = [
        (Reason.HEADER_FROM_NOT_OWNED, replies.header_from_not_owned, h, box)
        for h, box in (sources or [("From", b) for b in mailboxes])
    ]
    if profile.display_addresses == "refuse":
        checks += [
            (Reason.HEADER_FROM_DISPLAY_ADDRESS, replies.header_from_display_address, h, a)
            for h, a in display
        ]
    for reason, template, header, box in checks:
        is_owner = _owned_exactly(box, owned, rules) or _owned(who, box, facts, owned, rules)
        if is_owner is None:
            return _defer(
                Reason.DIRECTORY_UNAVAILABLE, render(replies.directory_unavailable, values)
            )
        if not is_owner:
            return _reject(
                profile, reason, render(template, {**values, "address": box, "header": header})
            )
    return Decision(Verdict.ACCEPT, Reason.HEADER_FROM_OWNED, reply="ACCEPT")


# Decisions are immutable values: the constant ones are made once.
_DUNNO_WRONG_REQUEST: Final = Decision(Verdict.DUNNO, Reason.WRONG_REQUEST)
_DUNNO_NOT_CHECKED_STATE: Final = Decision(Verdict.DUNNO, Reason.NOT_CHECKED_STATE)
_DUNNO_NULL_SENDER: Final = Decision(Verdict.DUNNO, Reason.NULL_SENDER)
_DUNNO_NOT_TRUSTED: Final = Decision(Verdict.DUNNO, Reason.NOT_TRUSTED)
# accept action -> its Decision, one table per reason (keyed by the action alone: an enum in a
# key would be hashed by Enum.__hash__, Python code, on every request)
_ACCEPTS: Final[dict[Reason, dict[str, Decision]]] = {}


def _say(template: str, sender: str, login: str, client: str) -> str:
    """A reply of decide(): the template filled with the request's values."""
    return render(template, {"sender": sender, "login": login, "client": client})


def _accept(profile: ProfileConfig, reason: Reason) -> Decision:
    if reason is Reason.SENDER_OWNED:
        table = _ACCEPTS_OWNED
    elif reason is Reason.ALLOCATED_NETWORK:
        table = _ACCEPTS_NETWORK
    else:
        table = _accepts_for(reason)
    action = profile.accept_action
    d = table.get(action)
    if d is None:
        d = Decision(Verdict.ACCEPT, reason, reply=action.upper())
        if len(table) < 64:  # (accept actions come from the config: a handful)
            table[action] = d
    return d


def _accepts_for(reason: Reason) -> dict[str, Decision]:
    table = _ACCEPTS.get(reason)
    if table is None:
        table = _ACCEPTS[reason] = {}
    return table


_ACCEPTS_OWNED: Final = _accepts_for(Reason.SENDER_OWNED)
_ACCEPTS_NETWORK: Final = _accepts_for(Reason.ALLOCATED_NETWORK)


def _reject(profile: ProfileConfig, reason: Reason, reply: str) -> Decision:
    if profile.mode == "warn":
        # Roll-out mode: say what would have happened, let Postfix's own rules decide.
        return Decision(Verdict.DUNNO, reason, would_have=reply)
    return Decision(Verdict.REJECT, reason, reply=reply)


def _defer(reason: Reason, reply: str) -> Decision:
    # Deliberately not softened by warn mode: an error never turns into a pass.
    return Decision(Verdict.DEFER, reason, reply=reply)
