"""Rate limits, counted in the store (so they survive restarts and add/remove cycles).

The per-address limits and the suppression list count an address with its `+` extension
stripped (`address_key`): other domains' usual delimiter makes victim+1@ and victim+2@ one
mailbox, so each variant does not get its own mails a day, and "This was not me" blocks them
all. Their refusals say one neutral thing (`NOT_NOW`): they must not tell the person asking
that another login asked for the address a moment ago, or that its owner refused.
"""

from __future__ import annotations

from policyd.addresses import AddressRules, split_address, split_extension
from policyd.config.verification import VerificationLimitsConfig
from policyd.verification.store import Tx
from policyd.verification.views import Refused

DAY = 86400.0
HOUR = 3600.0

#: Event kinds in the events table.
REQUEST = "request"  # key: login
MAIL = "mail"  # key: address, and GLOBAL for all of them
GLOBAL = "*"

#: The one answer for "no mail to this address now" (an interval, a daily limit, suppressed).
NOT_NOW = (
    "No confirmation mail can be sent to this address now; try again later, or ask your "
    "administrator."
)

_FOREIGN = AddressRules(extension_delimiters="+")


def address_key(address: str) -> str:
    """The (normalised) address without its `+` extension: the key of the per-address limits
    and of the suppression list."""
    local, domain = split_address(address)
    if not domain or local.startswith('"'):
        return address
    return f"{split_extension(local, _FOREIGN)}@{domain}"


def is_suppressed(tx: Tx, address: str) -> bool:
    """On the suppression list: the address itself, or its extension-stripped key."""
    key = address_key(address)
    return tx.is_suppressed(key) or (key != address and tx.is_suppressed(address))


def check_suppressed(tx: Tx, address: str) -> None:
    if is_suppressed(tx, address):
        raise Refused("suppressed", NOT_NOW)


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
    key = address_key(address)
    last = tx.last_event(MAIL, key)
    _limit(last is not None and now - last < lim.mail_interval_per_address, NOT_NOW)
    _limit(tx.count_events(MAIL, key, now - DAY) >= lim.mails_per_address_per_day, NOT_NOW)
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
    tx.add_event(MAIL, address_key(address), now)
    tx.add_event(MAIL, GLOBAL, now)
