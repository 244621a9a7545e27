"""Rate limits, counted in the store (so they survive restarts and add/remove cycles)."""

from __future__ import annotations

from policyd.config.verification import VerificationLimitsConfig
from policyd.verification.store import Tx
from policyd.verification.views import Refused

DAY = 86400.0
HOUR = 3600.0

#: Event kinds in the events table.
REQUEST = "request"  # key: login
MAIL = "mail"  # key: address, and GLOBAL for all of them
GLOBAL = "*"


def check_login(tx: Tx, lim: VerificationLimitsConfig, login: str, now: float, new: bool) -> None:
    """Per login: pending requests at once, and requests a day."""
    _limit(
        new and tx.pending_count(login) >= lim.pending_per_login,
        f"You have {lim.pending_per_login} requests waiting for confirmation; confirm or "
        "cancel one first.",
    )
    _limit(
        tx.count_events(REQUEST, login, now - DAY) >= lim.requests_per_login_per_day,
        f"You have made {lim.requests_per_login_per_day} requests today; try again tomorrow.",
    )


def check_mail(tx: Tx, lim: VerificationLimitsConfig, address: str, now: float) -> None:
    """Per target address (one mail per interval, so many a day) and for the whole host."""
    last = tx.last_event(MAIL, address)
    if last is not None and now - last < lim.mail_interval_per_address:
        wait = int(lim.mail_interval_per_address - (now - last)) // 60 + 1
        _limit(
            True,
            f"A confirmation mail was sent to this address a moment ago; wait {wait} "
            "minute(s) before asking for another.",
        )
    _limit(
        tx.count_events(MAIL, address, now - DAY) >= lim.mails_per_address_per_day,
        "Enough confirmation mails were sent to this address today; try again tomorrow.",
    )
    _limit(
        tx.count_events(MAIL, GLOBAL, now - HOUR) >= lim.mails_per_hour,
        "Too many confirmation mails are going out right now; try later.",
    )


def _limit(reached: bool, message: str) -> None:
    if reached:
        raise Refused("rate_limited", message)


def count(tx: Tx, login: str, address: str, now: float, request: bool) -> None:
    if request:
        tx.add_event(REQUEST, login, now)
    tx.add_event(MAIL, address, now)
    tx.add_event(MAIL, GLOBAL, now)
