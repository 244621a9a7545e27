"""The quota counters: one interface (QuotaStore), one algorithm, two backends.

The algorithm is GCRA (the generic cell rate algorithm, a leaky bucket kept as one number per
limit): a limit of L per period P lets a login send L at once, then one every P/L; it never
lets more than L through in any window of length P plus what has drained in it. One number
per login and limit (the "theoretical arrival time", TAT, in milliseconds), stored with an
expiry of TAT - now: a login that stopped sending leaves nothing behind.

A check covers every limit of the login at once: all are checked, and all are updated only
if all pass (a refused message changes no counter). `commit=False` checks without updating
(the read-only early answer at RCPT). A suspended login is refused before any limit.

`MemoryStore` runs it in this process; `policyd.quotas.redis_store.RedisStore` runs the same
steps as one Lua script on a Valkey/Redis server, with the server's clock. `create_store` is
the one place a backend is chosen.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    pass

#: Tolerance (ms) for the float arithmetic of the comparison (identical in the Lua script).
EPSILON_MS = 0.001


class Charge(NamedTuple):
    """One limit of a check: its name, L, P (seconds) and what this message costs. (A tuple:
    made for every limit of every message, a frozen dataclass costs a microsecond each.)"""

    name: str
    limit: int
    period: float
    cost: int


@dataclass(frozen=True)
class Outcome:
    """A check's result. Refused: `hit` names the first limit that did not pass, with its
    usage before this message, and how long until the message would fit."""

    allowed: bool
    suspended: str | None = None
    #: allowed, and not counted: a filter (the header From: milter) already refused it
    rejected_elsewhere: bool = False
    hit: str = ""
    used: int = 0
    limit: int = 0
    cost: int = 0
    retry_after: float = 0.0


#: the answer to most checks (immutable: shared)
ALLOWED = Outcome(True)


@dataclass(frozen=True)
class Usage:
    """One limit's state, for `policyd quota show`."""

    name: str
    limit: int
    used: int
    #: seconds until the counter is back to zero
    resets_in: float


class QuotaStoreError(Exception):
    """The store did not answer (down, timeout, protocol error). str() is one line."""


class QuotaStore(Protocol):
    """What the quota service asks of a counter store. Logins are canonical (lowercased)."""

    #: "memory" or the server's address, for logs
    name: str

    async def charge(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> Outcome:
        """Check, and with `commit` count, one message. `message` (Postfix's queue ID): a
        message `rejected()` named already is not counted; a counted one is remembered for
        MARK_TTL_MS, so a later `rejected()` takes it back."""
        ...

    async def rejected(self, login: str, message: str) -> bool:
        """Another filter (the header From: milter) refused `message`: take its count back
        (True), or, when it is not counted yet, make sure it never is (False)."""
        ...

    async def usage(self, login: str, charges: Sequence[Charge]) -> list[Usage]: ...

    async def reset(self, login: str) -> None: ...

    async def suspend(self, login: str, reason: str) -> None: ...

    async def unsuspend(self, login: str) -> None: ...

    async def suspension(self, login: str) -> str | None: ...

    async def observe(
        self, login: str, events: Sequence[tuple[str, str]], window: float
    ) -> dict[str, int]:
        """Add compromise signals (kind, member) at the store's time; the distinct members
        of each kind of SIGNALS within the last `window` seconds."""
        ...

    async def once(self, login: str, tag: str, period: float) -> bool:
        """True the first time (login, tag) is asked within `period` seconds (on every
        instance sharing the store): for notifications once per period."""
        ...

    async def close(self) -> None: ...


#: How long a message's "counted" or "rejected" mark lives: Postfix's end-of-data check and
#: the milter's verdict for one message come within seconds of each other.
MARK_TTL_MS = 600_000

#: The kinds of compromise signals a store keeps per login (compromise.py).
SIGNALS = ("net", "msg", "not_owned", "null", "country")
#: Members kept per login and kind (the newest): bounds a burst's memory.
MAX_SIGNAL_MEMBERS = 10_000


def gcra(
    tat: float | None, now: float, period_ms: float, limit: int, cost: int
) -> tuple[bool, float, int, float]:
    """One limit's step: (passes, the new TAT if it passes else the old, usage before this
    message, ms until it would fit). The Lua script of redis_store does exactly this."""
    interval = period_ms / limit
    start = now if tat is None or tat < now else tat
    new = start + cost * interval
    used = used_of(start, now, interval)
    if new - now > period_ms + EPSILON_MS:
        return False, start, used, new - now - period_ms
    return True, new, used, 0.0


def used_of(tat: float, now: float, interval: float) -> int:
    """The usage a TAT stands for: the costs not yet drained, rounded up."""
    if tat <= now:
        return 0
    return math.ceil((tat - now) / interval - 1e-9)


def usage_of(c: Charge, tat: float, now: float) -> Usage:
    """A limit's Usage from its TAT (ms; `now` where it has none)."""
    return Usage(
        c.name, c.limit, used_of(tat, now, c.period * 1000 / c.limit), max(0.0, tat - now) / 1000
    )


def key_prefix(login: str) -> str:
    """Every key of one login: its hash tag keeps them in one Cluster slot."""
    return f"policyd:{{{login}}}:"


@runtime_checkable
class TwoStepCharge(Protocol):
    """A store whose charge() also comes in two steps, for the every-message path
    (RedisStore): the call sent now (a future of the raw answer), then that answer read."""

    def charge_call(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> asyncio.Future[Any]: ...

    def outcome(self, charges: Sequence[Charge], r: Any) -> Outcome: ...


class MemoryStore:
    """The counters in this process: the embedded default (one instance), and the fallback
    while a shared store is unavailable. `clock` returns Unix time in seconds."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._tat: dict[tuple[str, str], float] = {}
        self._suspended: dict[str, str] = {}
        self._sweep_at = 1024
        #: (login, kind) -> member -> time (ms) it was last seen
        self._signals: dict[tuple[str, str], dict[str, float]] = {}
        #: (login, tag) -> until (ms)
        self._once: dict[tuple[str, str], float] = {}
        #: (login, "charged:ID" | "rejected:ID") -> (until (ms), what was counted)
        self._marks: dict[tuple[str, str], tuple[float, tuple[Charge, ...]]] = {}
        self._marks_sweep_at = 1024

    def _now(self) -> float:
        return self.clock() * 1000.0

    def charge_now(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> Outcome:
        """charge(), synchronously (the memory store never waits)."""
        reason = self._suspended.get(login)
        if reason is not None:
            return Outcome(False, suspended=reason)
        now = self._now()
        if message:
            mark = self._marks.pop((login, "rejected:" + message), None)
            if mark is not None and mark[0] > now:
                return Outcome(True, rejected_elsewhere=True)
        tats = self._tat
        new: list[tuple[tuple[str, str], float]] = []
        for c in charges:
            # (gcra(), inlined: the passing case is every message's)
            key = (login, c.name)
            period_ms = c.period * 1000
            tat = tats.get(key)
            start = now if tat is None or tat < now else tat
            after = start + c.cost * (period_ms / c.limit)
            if after - now > period_ms + EPSILON_MS:
                ok, tat, used, retry = gcra(tat, now, period_ms, c.limit, c.cost)
                return Outcome(
                    False,
                    hit=c.name,
                    used=used,
                    limit=c.limit,
                    cost=c.cost,
                    retry_after=retry / 1000.0,
                )
            new.append((key, after))
        if commit:
            for key, tat in new:
                tats[key] = tat
            if len(tats) > self._sweep_at:
                self._sweep(now)
            if message:
                self._mark(login, "charged:" + message, now, tuple(charges))
        return ALLOWED

    def _mark(self, login: str, name: str, now: float, charges: tuple[Charge, ...]) -> None:
        marks = self._marks
        if len(marks) > self._marks_sweep_at:
            for key in [k for k, (until, _) in marks.items() if until <= now]:
                del marks[key]
            # (amortised: the next sweep when the live marks have doubled, not at every mark)
            self._marks_sweep_at = max(1024, 2 * len(marks))
        marks[(login, name)] = (now + MARK_TTL_MS, charges)

    async def rejected(self, login: str, message: str) -> bool:
        now = self._now()
        mark = self._marks.pop((login, "charged:" + message), None)
        if mark is None or mark[0] <= now:
            self._mark(login, "rejected:" + message, now, ())
            return False
        for c in mark[1]:
            key = (login, c.name)
            tat = self._tat.get(key)
            if tat is None:
                continue
            new = tat - c.cost * (c.period * 1000 / c.limit)  # (the Lua script's amount)
            if new <= now:
                del self._tat[key]
            else:
                self._tat[key] = new
        return True

    def _sweep(self, now: float) -> None:
        """Forget drained counters (the expiry a Redis key has)."""
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
        self._sweep_at = max(1024, 2 * len(self._tat))

    async def charge(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> Outcome:
        return self.charge_now(login, charges, commit, message)

    async def usage(self, login: str, charges: Sequence[Charge]) -> list[Usage]:
        now = self._now()
        return [usage_of(c, self._tat.get((login, c.name), now), now) for c in charges]

    async def reset(self, login: str) -> None:
        for key in [k for k in self._tat if k[0] == login]:
            del self._tat[key]

    async def suspend(self, login: str, reason: str) -> None:
        self._suspended[login] = reason

    async def unsuspend(self, login: str) -> None:
        """Also forgets the login's compromise signals and its suspension notice."""
        self._suspended.pop(login, None)
        self._once.pop((login, "suspended"), None)
        for kind in SIGNALS:
            self._signals.pop((login, kind), None)

    async def suspension(self, login: str) -> str | None:
        return self._suspended.get(login)

    def suspended_logins(self) -> dict[str, str]:
        return dict(self._suspended)

    async def observe(
        self, login: str, events: Sequence[tuple[str, str]], window: float
    ) -> dict[str, int]:
        return self.observe_now(login, events, window)

    def observe_now(
        self, login: str, events: Sequence[tuple[str, str]], window: float
    ) -> dict[str, int]:
        now = self._now()
        for kind, member in events:
            seen = self._signals.setdefault((login, kind), {})
            seen.pop(member, None)
            seen[member] = now  # (newest last)
            if len(seen) > MAX_SIGNAL_MEMBERS:
                del seen[next(iter(seen))]
        out = {}
        oldest = now - window * 1000
        for kind in SIGNALS:
            kept = self._signals.get((login, kind))
            if kept is None:
                out[kind] = 0
                continue
            for member in [m for m, at in kept.items() if at <= oldest]:
                del kept[member]
            if not kept:
                del self._signals[(login, kind)]
            out[kind] = len(kept)
        if len(self._signals) > self._sweep_at:
            for key in [k for k, seen in self._signals.items() if max(seen.values()) <= oldest]:
                del self._signals[key]
        return out

    async def once(self, login: str, tag: str, period: float) -> bool:
        now = self._now()
        until = self._once.get((login, tag))
        if until is not None and until > now:
            return False
        if len(self._once) > self._sweep_at:
            for key in [k for k, u in self._once.items() if u <= now]:
                del self._once[key]
        self._once[(login, tag)] = now + period * 1000
        return True

    async def close(self) -> None:
        return None
