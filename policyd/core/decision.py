"""Decisions: what the engine returns. They become Postfix action strings only at the edge."""

from __future__ import annotations

import enum
from typing import Final


class Verdict(enum.Enum):
    ACCEPT = "accept"  # the profile's accept action (OK by default)
    DUNNO = "dunno"  # no opinion: Postfix's own restrictions decide
    REJECT = "reject"  # permanent 5xx
    DEFER = "defer"  # temporary 4xx: the client retries, nothing is lost
    HOLD = "hold"  # accepted into Postfix's hold queue (a suspended login: policyd.quotas)


class Reason(enum.Enum):
    NOT_CHECKED_STATE = "not_checked_state"
    WRONG_REQUEST = "wrong_request"
    NULL_SENDER = "null_sender"
    DIRECTORY_UNAVAILABLE = "directory_unavailable"
    INTERNAL_ERROR = "internal_error"  # a bug while deciding: still a 451, never a pass
    UNKNOWN_CONTEXT = "unknown_context"  # policy_context names no profile: 451, Postfix's config
    SENDER_OWNED = "sender_owned"
    SENDER_NOT_OWNED = "sender_not_owned"
    ALLOCATED_NETWORK = "allocated_network"
    SENDER_NOT_ALLOWED_FROM_NETWORK = "sender_not_allowed_from_network"
    AUTHENTICATION_REQUIRED = "authentication_required"
    NOT_TRUSTED = "not_trusted"
    SENDER_REQUIRES_LOGIN = "sender_requires_login"
    # quotas (policyd.quotas)
    QUOTA_EXCEEDED = "quota_exceeded"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    LOGIN_SUSPENDED = "login_suspended"
    QUOTA_STORE_UNAVAILABLE = "quota_store_unavailable"
    # milter only
    HEADER_FROM_OWNED = "header_from_owned"
    HEADER_FROM_NOT_OWNED = "header_from_not_owned"
    HEADER_FROM_DISPLAY_ADDRESS = "header_from_display_address"
    HEADER_FROM_INVALID = "header_from_invalid"
    NOT_AUTHENTICATED = "not_authenticated"


class Decision:
    """What the engine decided, and why. Read-only once built.

    A plain class with slots, not a frozen dataclass: a dataclass's generated __init__ is
    interpreted Python even in the compiled build, and a reply is built for every rejected
    request; compiled, this is a native class.
    """

    __slots__ = ("verdict", "reason", "reply", "would_have")

    def __init__(
        self, verdict: Verdict, reason: Reason, reply: str = "", would_have: str = ""
    ) -> None:
        self.verdict: Final = verdict
        self.reason: Final = reason
        # For ACCEPT: the accept action word (e.g. "OK", "DUNNO"). For REJECT/DEFER: the
        # full reply "553 5.7.1 text". Empty for DUNNO.
        self.reply: Final = reply
        # Set when warn mode turned a REJECT/DEFER into DUNNO: what would have been answered.
        self.would_have: Final = would_have

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Decision)
            and self.verdict is other.verdict
            and self.reason is other.reason
            and self.reply == other.reply
            and self.would_have == other.would_have
        )

    def __hash__(self) -> int:
        return hash((self.verdict._value_, self.reason._value_, self.reply, self.would_have))

    def __repr__(self) -> str:
        return (
            f"Decision(verdict={self.verdict}, reason={self.reason}, reply={self.reply!r}, "
            f"would_have={self.would_have!r})"
        )

    @property
    def code(self) -> str:
        """The three-digit SMTP code, or "" when the decision carries none."""
        head = self.reply[:3]
        return head if head.isdigit() else ""

    @property
    def enhanced_code(self) -> str:
        parts = self.reply.split(" ", 2)
        if len(parts) >= 2 and parts[1][:1].isdigit() and parts[1].count(".") == 2:
            return parts[1]
        return ""


def to_action(decision: Decision) -> str:
    """The Postfix action string for a decision (policy reply, milter and check log lines)."""
    if decision.verdict is Verdict.DUNNO:
        return "DUNNO"
    return decision.reply
