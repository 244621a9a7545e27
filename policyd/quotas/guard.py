"""A shared store behind a circuit breaker: never defer all mail because a counter server is away.

- Every call has the store's short timeout. A failure opens the breaker: for
  `store_retry_interval` seconds the store is not asked at all, then one call tries it again
  (half-open); a success closes it. One log line per change of state (`quota store
  unavailable: ...` / `quota store available again`), and `unavailable` for the metric.
- While open, `on_store_error = "memory"` counts in a MemoryStore of this instance (fail open
  for quotas: mail under quota is never deferred); `"defer"` raises QuotaStoreError.
- Suspended flags are kept stale-if-error: a login the store said was suspended (within
  `suspended_stale_if_error` seconds) stays suspended while the store is away.
- Suspensions and unsuspensions made while the store is away are kept and written to it when
  it is back (the last one per login wins), so none is lost.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from policyd.quotas.store import (
    Charge,
    MemoryStore,
    Outcome,
    QuotaStore,
    QuotaStoreError,
    TwoStepCharge,
    Usage,
)

if TYPE_CHECKING:
    from policyd.config.quotas import QuotasConfig

log = logging.getLogger("policyd.quotas")

T = TypeVar("T")


class _Away(enum.Enum):
    """What `_ask` returns when the store was not asked, or failed (its answer may be None)."""

    AWAY = 0


AWAY: Literal[_Away.AWAY] = _Away.AWAY


class GuardedStore:
    def __init__(
        self,
        primary: QuotaStore,
        config: QuotasConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.name = primary.name
        self.fallback = MemoryStore()
        self.retry_interval = config.store_retry_interval
        self.stale = config.suspended_stale_if_error
        self.fail_open = config.on_store_error == "memory"
        self.clock = clock
        #: the store's charge in two steps, when it has them (RedisStore)
        self._two_step = primary if isinstance(primary, TwoStepCharge) else None
        #: True while the breaker is open (the store is being kept out)
        self.unavailable = False
        #: calls that failed (a metric)
        self.errors = 0
        self._retry_at = 0.0
        #: login -> (reason, monotonic time the store said so)
        self._seen_suspended: dict[str, tuple[str, float]] = {}
        #: login -> reason (suspend) or None (unsuspend), made while the store was away
        self._pending: dict[str, str | None] = {}

    # -- the breaker -------------------------------------------------------------------------

    def _closed(self) -> bool:
        """Whether to ask the store now (closed, or half-open: time to try again)."""
        return not self.unavailable or self.clock() >= self._retry_at

    def _failed(self, e: QuotaStoreError) -> None:
        self.errors += 1
        self._retry_at = self.clock() + self.retry_interval
        if not self.unavailable:
            self.unavailable = True
            log.warning(
                "quota store unavailable: %s; %s for %gs before trying again",
                e,
                "counting per instance" if self.fail_open else "deferring quota checks",
                self.retry_interval,
            )

    async def _succeeded(self) -> None:
        if not self.unavailable:
            return
        self.unavailable = False
        pending, self._pending = self._pending, {}
        for login, reason in pending.items():
            try:
                await self._write(login, reason)
            except QuotaStoreError as e:
                self._pending.setdefault(login, reason)
                self._failed(e)
                return
        log.info(
            "quota store available again: %s; %d suspension change(s) written back",
            self.name,
            len(pending),
        )

    async def _write(self, login: str, reason: str | None) -> None:
        """A suspension (reason) or unsuspension (None) to the store."""
        if reason is None:
            await self.primary.unsuspend(login)
        else:
            await self.primary.suspend(login, reason)

    async def _ask(self, call: Callable[[], Awaitable[T]]) -> T | Literal[_Away.AWAY]:
        """The store's answer to `call` if the breaker lets it be asked and it answers."""
        if not self._closed():
            return AWAY
        try:
            out = await call()
        except QuotaStoreError as e:
            self._failed(e)
            return AWAY
        await self._succeeded()
        return out

    def _stale_suspension(self, login: str) -> str | None:
        seen = self._seen_suspended.get(login)
        if seen is None:
            return None
        if self.clock() - seen[1] > self.stale:
            del self._seen_suspended[login]
            return None
        return seen[0]

    # -- QuotaStore ------------------------------------------------------------------------

    async def charge(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> Outcome:
        out: Outcome | Literal[_Away.AWAY]
        if self.unavailable:
            out = await self._ask(lambda: self.primary.charge(login, charges, commit, message))
        else:  # (every message's path: _ask without its lambda and frames)
            try:
                out = await self.primary.charge(login, charges, commit, message)
            except QuotaStoreError as e:
                self._failed(e)
                out = AWAY
        return self._settle(login, charges, commit, message, out)

    def charge_call(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> asyncio.Future[Any] | None:
        """charge() in two steps, for the every-message path: while the breaker is closed and
        the store can (RedisStore), its call sent now (the future to give charged()); None:
        ask charge() instead."""
        if self._two_step is None or self.unavailable:
            return None
        return self._two_step.charge_call(login, charges, commit, message)

    def charged(
        self,
        login: str,
        charges: Sequence[Charge],
        commit: bool,
        message: str,
        fut: asyncio.Future[Any],
    ) -> Outcome:
        """The outcome of charge_call()'s done future, as charge() gives it (the breaker and
        the fallback on a store error; QuotaStoreError with on_store_error = "defer")."""
        assert self._two_step is not None
        out: Outcome | Literal[_Away.AWAY]
        try:
            out = self._two_step.outcome(charges, fut.result())
        except QuotaStoreError as e:
            self._failed(e)
            out = AWAY
        return self._settle(login, charges, commit, message, out)

    def _settle(
        self,
        login: str,
        charges: Sequence[Charge],
        commit: bool,
        message: str,
        out: Outcome | Literal[_Away.AWAY],
    ) -> Outcome:
        if out is not AWAY:
            if out.suspended is not None:
                self._seen_suspended[login] = (out.suspended, self.clock())
            else:
                self._seen_suspended.pop(login, None)
            return out
        if not self.fail_open:
            raise QuotaStoreError(f"{self.name}: unavailable")
        reason = self._pending.get(login, "")
        if reason is None:  # unsuspended while away
            pass
        elif reason:
            return Outcome(False, suspended=reason)
        else:
            stale = self._stale_suspension(login)
            if stale is not None:
                return Outcome(False, suspended=stale)
        return self.fallback.charge_now(login, charges, commit, message)

    async def rejected(self, login: str, message: str) -> bool:
        out = await self._ask(lambda: self.primary.rejected(login, message))
        if out is not AWAY:
            return out
        return await self.fallback.rejected(login, message)

    async def usage(self, login: str, charges: Sequence[Charge]) -> list[Usage]:
        return await self.primary.usage(login, charges)

    async def reset(self, login: str) -> None:
        await self.fallback.reset(login)
        await self.primary.reset(login)

    async def suspend(self, login: str, reason: str) -> None:
        await self._change(login, reason)

    async def unsuspend(self, login: str) -> None:
        await self._change(login, None)

    async def _change(self, login: str, reason: str | None) -> None:
        if reason is None:
            self._seen_suspended.pop(login, None)
        else:
            self._seen_suspended[login] = (reason, self.clock())
        if await self._ask(lambda: self._write(login, reason)) is not AWAY:
            return
        self._pending[login] = reason
        log.warning(
            "quota store unavailable: %s of %s kept, written when the store is back",
            "unsuspension" if reason is None else "suspension",
            login,
        )

    async def suspension(self, login: str) -> str | None:
        out = await self._ask(lambda: self.primary.suspension(login))
        if out is not AWAY:
            return out
        if login in self._pending:
            return self._pending[login]
        return self._stale_suspension(login)

    async def observe(
        self, login: str, events: Sequence[tuple[str, str]], window: float
    ) -> dict[str, int]:
        out = await self._ask(lambda: self.primary.observe(login, events, window))
        if out is not AWAY:
            return out
        return self.fallback.observe_now(login, events, window)

    async def once(self, login: str, tag: str, period: float) -> bool:
        out = await self._ask(lambda: self.primary.once(login, tag, period))
        if out is not AWAY:
            return out
        return await self.fallback.once(login, tag, period)

    async def close(self) -> None:
        await self.primary.close()
