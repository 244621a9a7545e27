"""Decisions: what the engine returns. They become Postfix action strings only at the edge."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    ACCEPT = "accept"  # the profile's accept action (OK by default)
    DUNNO = "dunno"  # no opinion: Postfix's own restrictions decide
    REJECT = "reject"  # permanent 5xx
    DEFER = "defer"  # temporary 4xx: the client retries, nothing is lost


class Reason(enum.Enum):
    NOT_CHECKED_STATE = "not_checked_state"
    WRONG_REQUEST = "wrong_request"
    NULL_SENDER = "null_sender"
    DIRECTORY_UNAVAILABLE = "directory_unavailable"
    INTERNAL_ERROR = "internal_error"  # a bug while deciding: still a 451, never a pass
    SENDER_OWNED = "sender_owned"
    SENDER_NOT_OWNED = "sender_not_owned"
    ALLOCATED_NETWORK = "allocated_network"
    SENDER_NOT_ALLOWED_FROM_NETWORK = "sender_not_allowed_from_network"
    AUTHENTICATION_REQUIRED = "authentication_required"
    NOT_TRUSTED = "not_trusted"
    SENDER_REQUIRES_LOGIN = "sender_requires_login"
    # milter only
    HEADER_FROM_OWNED = "header_from_owned"
    HEADER_FROM_NOT_OWNED = "header_from_not_owned"
    HEADER_FROM_DISPLAY_ADDRESS = "header_from_display_address"
    HEADER_FROM_INVALID = "header_from_invalid"
    NOT_AUTHENTICATED = "not_authenticated"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: Reason
    # For ACCEPT: the accept action word (e.g. "OK", "DUNNO"). For REJECT/DEFER: the full
    # reply "553 5.7.1 text". Empty for DUNNO.
    reply: str = ""
    # Set when warn mode turned a REJECT/DEFER into DUNNO: what would have been answered.
    would_have: str = ""

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
