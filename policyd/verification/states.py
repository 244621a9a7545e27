"""The life of one request, as a table. Pure.

    (none)   --request-->        pending
    (none)   --add_unverified--> verified     (an admin's override, audited as such)
    pending  --resend-->         pending      (new code and link; the old ones are void)
    pending  --confirm-->        verified
    pending  --add_unverified--> verified
    pending  --expire-->         expired
    pending  --cancel-->         cancelled
    pending  --too_many_tries--> cancelled
    pending  --refuse-->         refused      ("This was not me": the address is suppressed)
    verified --revoke-->         revoked

Every other (state, event) is refused. Only "verified" counts as owned.
"""

from __future__ import annotations

from typing import Final

PENDING: Final = "pending"
VERIFIED: Final = "verified"
EXPIRED: Final = "expired"
CANCELLED: Final = "cancelled"
REFUSED: Final = "refused"
REVOKED: Final = "revoked"

STATES: Final = (PENDING, VERIFIED, EXPIRED, CANCELLED, REFUSED, REVOKED)
#: States a request stays in (a pending or verified one blocks a second for the same pair).
ACTIVE: Final = frozenset({PENDING, VERIFIED})
#: States `purge` may delete (the audit log is kept).
PURGEABLE: Final = frozenset({EXPIRED, CANCELLED, REFUSED})

TRANSITIONS: Final[dict[tuple[str | None, str], str]] = {
    (None, "request"): PENDING,
    (None, "add_unverified"): VERIFIED,
    (PENDING, "resend"): PENDING,
    (PENDING, "confirm"): VERIFIED,
    (PENDING, "add_unverified"): VERIFIED,
    (PENDING, "expire"): EXPIRED,
    (PENDING, "cancel"): CANCELLED,
    (PENDING, "too_many_tries"): CANCELLED,
    (PENDING, "refuse"): REFUSED,
    (VERIFIED, "revoke"): REVOKED,
}

EVENTS: Final = frozenset(event for _, event in TRANSITIONS)


class InvalidTransition(Exception):
    def __init__(self, state: str | None, event: str) -> None:
        super().__init__(f"no transition from {state or '(none)'} on {event}")
        self.state, self.event = state, event


def next_state(state: str | None, event: str) -> str:
    """The state after `event`, or InvalidTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


def counts_as_owned(state: str) -> bool:
    return state == VERIFIED
