"""Telling a thief from a busy user: compromise signals per login -> score -> suspension.

Signals, over a sliding window (`[quotas.compromise] window` seconds), per login, in this
instance: distinct client networks it sends from (IPv4 /24, IPv6 /64), messages beyond
`burst_messages` (a burst), policyd's own sender_not_owned refusals for it, and authenticated
messages with the null sender. Score = the sum of each signal's count times its points (the
first network is free). A score of `threshold` or more suspends the login in the store (every
instance checks that flag first), logs one line, and notifies (once per suspension).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from policyd.quotas.config import QuotasConfig
from policyd.quotas.store import QuotaStore, QuotaStoreError

log: Final = logging.getLogger("policyd.quotas")

#: Logins whose signals are remembered per instance (the least recently seen is forgotten).
MAX_LOGINS: Final = 50_000

#: Called once per suspension: (login, why). Must not raise.
Notify = Callable[[str, str], Awaitable[None]]


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


@dataclass
class _Window:
    #: (time, client network) per message
    messages: deque[tuple[float, str]] = field(default_factory=deque)
    #: (time, signal name) per other signal
    signals: deque[tuple[float, str]] = field(default_factory=deque)


class Detector:
    def __init__(
        self,
        config: QuotasConfig,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.notify = notify
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        #: suspensions made (a metric)
        self.suspended = 0

    def _window(self, login: str) -> _Window:
        w = self._windows.pop(login, None)
        if w is None:
            w = _Window()
            if len(self._windows) >= MAX_LOGINS:
                del self._windows[next(iter(self._windows))]
        self._windows[login] = w  # (most recently seen last)
        now, span = self.clock(), self.config.compromise.window
        for q in (w.messages, w.signals):
            while q and now - q[0][0] > span:
                q.popleft()
        return w

    def score(self, login: str) -> tuple[float, str]:
        """The login's score now, and what it is made of (for the log and the mail)."""
        c = self.config.compromise
        w = self._window(login)
        networks = len({n for _, n in w.messages if n})
        burst = max(0, len(w.messages) - c.burst_messages)
        not_owned = sum(1 for _, s in w.signals if s == "not_owned")
        null = sum(1 for _, s in w.signals if s == "null_sender")
        total = (
            c.network_points * max(0, networks - 1)
            + c.burst_points * burst
            + c.not_owned_points * not_owned
            + c.null_sender_points * null
        )
        why = (
            f"networks={networks} messages={len(w.messages)} not_owned={not_owned} "
            f"null_sender={null} score={total:g} window={c.window:g}s"
        )
        return total, why

    async def observe(self, login: str, client: str, null_sender: bool, store: QuotaStore) -> None:
        """One message at END-OF-MESSAGE (before it is counted)."""
        w = self._window(login)
        now = self.clock()
        w.messages.append((now, network_of(client)))
        if null_sender:
            w.signals.append((now, "null_sender"))
        await self._judge(login, store)

    async def signal(self, login: str, name: str, store: QuotaStore) -> None:
        """A refusal that is a signal ("not_owned")."""
        self._window(login).signals.append((self.clock(), name))
        await self._judge(login, store)

    async def _judge(self, login: str, store: QuotaStore) -> None:
        total, why = self.score(login)
        if total < self.config.compromise.threshold:
            return
        try:
            if await store.suspension(login) is not None:
                return
            await store.suspend(login, f"compromise signals: {why}")
        except QuotaStoreError as e:
            log.warning("cannot suspend %s: %s", login, str(e))
            return
        self.suspended += 1
        self._windows.pop(login, None)  # (a new start after an unsuspend)
        log.warning("login suspended login=%s %s", login, why)
        if self.notify is not None:
            await self.notify(login, why)
