"""The lookups with extra ownership sources merged behind them (the verified senders).

    addresses_of(login) = directory's - source.revoked_of(login) | source.addresses_of(login)
    owners_of(key)      = directory's, minus the logins that revoked key here,
                          | source.owners_of(key)   (unless include_verified=False)

The verified owners take part in Postfix's ownership rule for a logged-in user (the most
specific key that has an owner decides: bob's verified x+boss@gmail.example is not alice's
because she verified x@gmail.example). protect_local_senders asks with include_verified=False:
verified addresses are always foreign (our own domains cannot be verified), so counting
x@gmail.example as "one of our logins' addresses" would refuse the mail Gmail itself delivers
from it at the MX.

Before answering, a stale source is refreshed (`refresh()` in a thread, bounded by the lookup
deadline, one refresh at a time); if that fails the answer is DirectoryUnavailable (the 451),
never "owned" and never silently "not owned". `peek_*` never block: a stale source makes them
say None, and the async path refreshes. Everything else (runner, stats, len, close) is the
wrapped lookups'.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from policyd.directory.base import DirectoryError, DirectoryUnavailable
from policyd.directory.lookups import Lookups

log = logging.getLogger(__name__)


class Source(Protocol):
    def addresses_of(self, login: str) -> frozenset[str]: ...
    def owners_of(self, key: str) -> frozenset[str]: ...
    def revoked_of(self, login: str) -> frozenset[str]: ...
    def stale(self) -> bool: ...
    def refresh(self) -> None: ...
    def explain(self, login: str, address: str) -> str | None: ...
    def close(self) -> None: ...


class SourcedLookups:
    def __init__(self, inner: Any, sources: Sequence[Source], deadline: float) -> None:
        self.inner: Lookups = inner
        self.sources = tuple(sources)
        self.deadline = deadline
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="policyd-sources")
        self._refreshing: asyncio.Future[None] | None = None

    # pass-through for the app and the metrics
    @property
    def runner(self) -> Any:
        return getattr(self.inner, "runner", None)

    @property
    def stats(self) -> Any:
        return getattr(self.inner, "stats", None)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def close(self) -> None:
        self.inner.close()
        for s in self.sources:
            s.close()
        self._pool.shutdown(wait=False)

    # merging
    def _stale(self) -> bool:
        return any(s.stale() for s in self.sources)

    def _addresses(self, login: str, found: frozenset[str]) -> frozenset[str]:
        for s in self.sources:
            gone = s.revoked_of(login)
            if gone:
                found = found - gone
            extra = s.addresses_of(login)
            if extra:
                found = found | extra
        return found

    def _owners(self, key: str, found: frozenset[str], include_verified: bool) -> frozenset[str]:
        for s in self.sources:
            if found:
                found = frozenset(login for login in found if key not in s.revoked_of(login))
            if include_verified:
                found = found | s.owners_of(key)
        return found

    def peek_addresses(self, login: str) -> frozenset[str] | None:
        if self._stale():
            return None
        found = self.inner.peek_addresses(login)
        return None if found is None else self._addresses(login, found)

    def peek_owners(self, key: str, include_verified: bool = True) -> frozenset[str] | None:
        if self._stale():
            return None
        found = self.inner.peek_owners(key)
        return None if found is None else self._owners(key, found, include_verified)

    async def _fresh(self) -> None:
        if not self._stale():
            return
        pending = self._refreshing
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._refreshing = asyncio.ensure_future(
                loop.run_in_executor(self._pool, self._refresh_all)
            )
            pending.add_done_callback(self._done)
        try:
            await asyncio.wait_for(asyncio.shield(pending), self.deadline)
        except TimeoutError:
            raise DirectoryUnavailable(
                f"verified senders: no answer within {self.deadline:g} s"
            ) from None

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._refreshing = None
        if not fut.cancelled():
            fut.exception()  # (retrieved: the waiters re-raise it)

    def _refresh_all(self) -> None:
        for s in self.sources:
            if s.stale():
                try:
                    s.refresh()
                except DirectoryUnavailable:
                    raise
                except Exception as e:  # noqa: BLE001 - any failure to read means "cannot answer"
                    raise DirectoryUnavailable(f"verified senders: {e}") from None

    async def addresses_of(self, login: str) -> frozenset[str]:
        await self._fresh()
        return self._addresses(login, await self.inner.addresses_of(login))

    async def owners_of(self, key: str, include_verified: bool = True) -> frozenset[str]:
        await self._fresh()
        return self._owners(key, await self.inner.owners_of(key), include_verified)

    def explain(self, login: str) -> list[str]:
        """For `policyd check`: "owns x@...: verified 2026-12-01 by code" per verified address."""
        out = []
        for s in self.sources:
            for address in sorted(s.addresses_of(login)):
                why = s.explain(login, address)
                if why:
                    out.append(f"owns {address}: {why}")
        return out


def with_verified_source(config: Any, inner: Any) -> SourcedLookups:
    """The runtime's lookups with the verified-senders source behind them, loaded once.
    Raises DirectoryError (a load error: startup or reload fails, saying why) when the
    database cannot be opened; later failures are the lookups' 451."""
    from policyd.verification.source import VerifiedSource

    vc = config.verification
    # With store = "ldap" a revocation must beat the LDAP cache of this instance (its values
    # are reused up to positive_ttl, and up to stale_if_error while the directory is down).
    window = config.cache.positive_ttl + config.cache.stale_if_error if vc.store == "ldap" else 0.0
    source = VerifiedSource(vc.database, busy_timeout=vc.busy_timeout, revoke_window=window)
    try:
        source.refresh()  # at load: a database that cannot be opened is a setup error
    except DirectoryUnavailable as e:
        source.close()
        raise DirectoryError(f"verification.database: {e}") from None
    return SourcedLookups(inner, [source], config.directory.lookup_deadline)
