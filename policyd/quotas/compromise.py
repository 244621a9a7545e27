"""Telling a thief from a busy user: compromise signals per login -> score -> suspension.

Signals, kept in the store (so every instance sees all of a login's traffic) over a sliding
window (`[quotas.compromise] window` seconds): distinct client networks the login sends from
(IPv4 /24, IPv6 /64), its messages (beyond `burst_messages`: a burst), policyd's own
sender_not_owned refusals for it, and authenticated messages with the null sender. Score = the
sum of each count times its points (the first network is free). A score of `threshold` or
more suspends the login in the store (every instance checks that flag first), logs one line
and notifies (once per notify_period, on every instance together).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from policyd.config.quotas import QuotasConfig
from policyd.quotas.store import QuotaStore, QuotaStoreError

log: Final = logging.getLogger("policyd.quotas")

#: Called for a notification: (login, subject, text). Must not raise.
Notify = Callable[[str, str, str], Awaitable[None]]


def network_of(address: str) -> str:
    """The client's /24 (IPv4) or /64 (IPv6); "" when not an address."""
    text = address.strip()
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return ""
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def score(config: QuotasConfig, counts: Mapping[str, int]) -> tuple[float, str]:
    """The score of these signal counts, and what it is made of (for the log and the mail)."""
    c = config.compromise
    nets, msgs = counts.get("net", 0), counts.get("msg", 0)
    not_owned, null = counts.get("not_owned", 0), counts.get("null", 0)
    countries = counts.get("country", 0)
    total = (
        c.network_points * max(0, nets - 1)
        + c.burst_points * max(0, msgs - c.burst_messages)
        + c.not_owned_points * not_owned
        + c.null_sender_points * null
        + c.country_points * max(0, countries - 1)
    )
    why = (
        f"networks={nets} messages={msgs} not_owned={not_owned} null_sender={null} "
        + (f"countries={countries} " if c.geoip_database is not None else "")
        + f"score={total:g} threshold={c.threshold:g} window={c.window:g}s"
    )
    return total, why


class Detector:
    def __init__(self, config: QuotasConfig, notify: Notify | None = None) -> None:
        self.config = config
        self.notify = notify
        #: suspensions this instance made (a metric)
        self.suspended = 0
        self.geoip = _open_geoip(config.compromise.geoip_database)

    def country_of(self, address: str) -> str:
        """The ISO country code of a client address in the MaxMind database, or ""."""
        if self.geoip is None:
            return ""
        text = address.strip()
        if text.lower().startswith("ipv6:"):
            text = text[5:]
        try:
            record = self.geoip.get(text)
        except ValueError:  # (not an address, or IPv6 in an IPv4-only database)
            return ""
        if not isinstance(record, dict):
            return ""
        for key in ("country", "registered_country"):
            entry = record.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("iso_code"), str):
                return str(entry["iso_code"])
        return ""

    async def observe(self, login: str, client: str, null_sender: bool, store: QuotaStore) -> None:
        """One message at END-OF-MESSAGE (before it is counted)."""
        token = secrets.token_hex(8)  # (a message is one member of "msg")
        events = [("msg", token)]
        net = network_of(client)
        if net:
            events.append(("net", net))
        if null_sender:
            events.append(("null", token))
        country = self.country_of(client)
        if country:
            events.append(("country", country))
        await self._judge(login, events, store)

    async def signal(self, login: str, kind: str, store: QuotaStore) -> None:
        """A refusal that is a signal ("not_owned")."""
        await self._judge(login, [(kind, secrets.token_hex(8))], store)

    async def _judge(self, login: str, events: list[tuple[str, str]], store: QuotaStore) -> None:
        try:
            counts = await store.observe(login, events, self.config.compromise.window)
        except QuotaStoreError as e:  # (only a store without a guard raises)
            log.warning("compromise signals not recorded for %s: %s", login, str(e))
            return
        total, why = score(self.config, counts)
        if total < self.config.compromise.threshold:
            return
        try:
            if await store.suspension(login) is not None:
                return
            await store.suspend(login, f"compromise signals: {why}")
            first = await store.once(login, "suspended", self.config.notify_period)
        except QuotaStoreError as e:
            log.warning("cannot suspend %s: %s", login, str(e))
            return
        self.suspended += 1
        log.warning("login suspended login=%s %s", login, why)
        if first and self.notify is not None:
            await self.notify(
                login,
                f"policyd suspended the login {login}",
                f"policyd suspended the login {login}: its messages are now answered "
                f"{self.config.suspended_action.upper()}.\n\nSignals: {why}\n\n"
                f"When the account is safe again: policyd quota unsuspend {login}\n"
                f"(held messages: postqueue -p; release: postsuper -H QUEUE_ID, "
                f"or delete them: postsuper -d QUEUE_ID)\n",
            )


def _open_geoip(path: Path | None) -> Any:
    """The maxminddb reader of `path` (checked at config load), or None (logged)."""
    if path is None:
        return None
    try:
        import maxminddb
    except ImportError as e:
        log.warning("geoip_database %s not used: %s", path, e)
        return None
    try:
        return maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        log.warning("geoip_database %s not used: %s", path, e)
        return None
