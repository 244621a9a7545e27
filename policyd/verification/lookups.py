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

A verified address counts only while (checked each time the set is read, with the lookups'
cache, so a directory change takes effect within the cache's TTL and MEMO_SECONDS, without a
command):
the directory still gives its login the identity it had when it verified (a new entry under the
same login is someone else); nobody else in the directory owns the address, its
extension-stripped key or its "@domain" (the directory wins); it is not in
`verification.local_domains` or a subdomain. And it counts for its exact key only: addresses_of
hands it out in owned.Owned's `exact_only`, which the engine keeps away from the
wider keys (x+tag@elsewhere.example may be another mailbox there).

Before answering, a stale source is refreshed (`refresh()` in a thread, bounded by the lookup
deadline, one refresh at a time); if that fails the answer is DirectoryUnavailable (the 451),
never "owned" and never silently "not owned". `peek_*` never block: a stale source makes them
say None, and the async path refreshes. Everything else (runner, stats, len, close) is the
wrapped lookups'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from policyd.addresses import (
    DEFAULT_RULES,
    AddressRules,
    candidates,
    normalize_domain,
)
from policyd.directory.base import DirectoryError, DirectoryUnavailable
from policyd.directory.lookups import Lookups
from policyd.owned import with_exact_only

log = logging.getLogger(__name__)

#: How long the answer "which of a login's verified addresses count" is reused without asking
#: the lookups again (a decision per message would otherwise ask them again and again).
MEMO_SECONDS = 1.0

#: (owners of a key as the directory has them; None: not known without blocking)
KeyOwners = Callable[[str], frozenset[str] | None]


class Source(Protocol):
    def addresses_of(self, login: str) -> frozenset[str]: ...
    def owners_of(self, key: str) -> frozenset[str]: ...
    def revoked_of(self, login: str) -> frozenset[str]: ...
    def identity(self, login: str, address: str) -> str | None: ...
    def stale(self) -> bool: ...
    def refresh(self) -> None: ...
    def explain(self, login: str, address: str) -> str | None: ...
    def close(self) -> None: ...


class SourcedLookups:
    def __init__(
        self,
        inner: Any,
        sources: Sequence[Source],
        deadline: float,
        *,
        local_domains: frozenset[str] = frozenset(),
        rules: AddressRules = DEFAULT_RULES,
        directory_holds_verified: bool = False,
    ) -> None:
        self.inner: Lookups = inner
        self.sources = tuple(sources)
        self.deadline = deadline
        self.local_domains = local_domains
        self._local = tuple(sorted({normalize_domain(d) for d in local_domains}))
        self.rules = rules
        self._keys: dict[str, tuple[bool, tuple[str, ...]]] = {}
        #: (source, login) -> (its verified set, until when, those that count)
        self._memo: dict[tuple[int, str], tuple[frozenset[str], float, frozenset[str]]] = {}
        #: store = "ldap": the directory's own answer holds the verified addresses too, so one
        #: that no longer counts is taken out of it as well
        self.directory_holds_verified = directory_holds_verified
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

    # -- whether a verified address still counts ------------------------------------------

    def _counts(
        self,
        s: Source,
        login: str,
        address: str,
        identity: frozenset[str] | None,
        owners: KeyOwners,
    ) -> bool | None:
        """Whether the login's verified address still counts (None: a directory answer it
        needs is not known without blocking)."""
        if identity is None:
            return None
        recorded = s.identity(login, address)
        if not identity or (recorded is not None and recorded not in identity):
            return False  # the entry is gone, or the login is another entry now
        local, keys = self._facts(address)
        if local:
            return False
        for key in keys:
            found = owners(key)
            if found is None:
                return None
            if found - {login}:
                return False  # superseded: the directory gives it to someone
        return True

    def _facts(self, address: str) -> tuple[bool, tuple[str, ...]]:
        """(in local_domains or a subdomain, its keys) of a verified address, computed once
        (the check runs on every decision for a login with verified addresses)."""
        facts = self._keys.get(address)
        if facts is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            domain = address.rpartition("@")[2]
            local = any(domain == d or domain.endswith("." + d) for d in self._local)
            facts = self._keys[address] = (local, candidates(address, self.rules))
        return facts

    def _peek_directory_owners(self, key: str) -> frozenset[str] | None:
        return self.inner.peek_owners(key, include_verified=False)

    async def _directory_owners(self, addresses: frozenset[str]) -> dict[str, frozenset[str]]:
        keys = dict.fromkeys(k for a in sorted(addresses) for k in self._facts(a)[1])
        return {k: await self.inner.owners_of(k, include_verified=False) for k in keys}

    def _remembered(self, s: Source, login: str, verified: frozenset[str]) -> frozenset[str] | None:
        """The answer of _counting for this set (the same object: the source was not
        re-read) found less than MEMO_SECONDS ago."""
        memo = self._memo.get((id(s), login))
        if memo is not None and memo[0] is verified and memo[1] > time.monotonic():
            return memo[2]
        return None

    def _remember(
        self, s: Source, login: str, verified: frozenset[str], good: frozenset[str]
    ) -> frozenset[str]:
        if len(self._memo) > 100_000:
            self._memo.clear()
        self._memo[(id(s), login)] = (verified, time.monotonic() + MEMO_SECONDS, good)
        return good

    def _peek_counting(
        self, s: Source, login: str, verified: frozenset[str], remember: bool = True
    ) -> frozenset[str] | None:
        """Those of the login's verified addresses that count, or None. (remember=False:
        `verified` is not the login's whole set.)"""
        hit = self._remembered(s, login, verified) if remember else None
        if hit is not None:
            return hit
        identity = self.inner.peek_identity(login)
        out = set()
        for address in verified:
            ok = self._counts(s, login, address, identity, self._peek_directory_owners)
            if ok is None:
                return None
            if ok:
                out.add(address)
        good = frozenset(out)
        return self._remember(s, login, verified, good) if remember else good

    async def _counting(
        self, s: Source, login: str, verified: frozenset[str], remember: bool = True
    ) -> frozenset[str]:
        hit = self._remembered(s, login, verified) if remember else None
        if hit is not None:
            return hit
        identity = await self.inner.identity_of(login)
        known = await self._directory_owners(verified)
        good = frozenset(a for a in verified if self._counts(s, login, a, identity, known.get))
        return self._remember(s, login, verified, good) if remember else good

    # -- merging ----------------------------------------------------------------------------

    def _stale(self) -> bool:
        return any(s.stale() for s in self.sources)

    def _addresses(
        self, login: str, found: frozenset[str], counting: Sequence[frozenset[str]]
    ) -> frozenset[str]:
        exact: frozenset[str] = frozenset()
        for s, good in zip(self.sources, counting, strict=True):
            gone = s.revoked_of(login)
            if gone:
                found = found - gone
            verified = s.addresses_of(login)
            if self.directory_holds_verified and len(good) < len(verified):
                found = found - (verified - good)
            if good:
                found = found | good
                exact = exact | good
        return with_exact_only(found, exact)

    def _owners(
        self, key: str, found: frozenset[str], verified: Sequence[set[str]]
    ) -> frozenset[str]:
        """`verified`: per source, the logins whose verified `key` counts."""
        for s, extra in zip(self.sources, verified, strict=True):
            if found:
                found = frozenset(login for login in found if key not in s.revoked_of(login))
            if extra:
                found = found | extra
        return found

    def peek_addresses(self, login: str) -> frozenset[str] | None:
        if self._stale():
            return None
        found = self.inner.peek_addresses(login)
        if found is None:
            return None
        counting = []
        for s in self.sources:
            verified = s.addresses_of(login)
            good = self._peek_counting(s, login, verified) if verified else verified
            if good is None:
                return None
            counting.append(good)
        return self._addresses(login, found, counting)

    def peek_owners(self, key: str, include_verified: bool = True) -> frozenset[str] | None:
        if self._stale():
            return None
        found = self.inner.peek_owners(key)
        if found is None:
            return None
        verified: list[set[str]] = []
        for s in self.sources:
            logins = set()
            for login in s.owners_of(key) if include_verified else ():
                good = self._peek_counting(s, login, frozenset({key}), remember=False)
                if good is None:
                    return None
                if good:
                    logins.add(login)
            verified.append(logins)
        return self._owners(key, found, verified)

    def peek_identity(self, login: str) -> frozenset[str] | None:
        return self.inner.peek_identity(login)

    async def identity_of(self, login: str) -> frozenset[str]:
        return await self.inner.identity_of(login)

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
        found = await self.inner.addresses_of(login)
        counting = []
        for s in self.sources:
            verified = s.addresses_of(login)
            counting.append(await self._counting(s, login, verified) if verified else verified)
        return self._addresses(login, found, counting)

    async def owners_of(self, key: str, include_verified: bool = True) -> frozenset[str]:
        await self._fresh()
        found = await self.inner.owners_of(key)
        verified: list[set[str]] = []
        for s in self.sources:
            logins = set()
            for login in s.owners_of(key) if include_verified else ():
                if await self._counting(s, login, frozenset({key}), remember=False):
                    logins.add(login)
            verified.append(logins)
        return self._owners(key, found, verified)

    def explain(self, login: str) -> list[str]:
        """For `policyd check`: "owns x@...: verified 2026-12-01 by code" per verified address
        that counts ("superseded: x@...: ..., does not count" for one that does not)."""
        out = []
        owned = self.peek_addresses(login)  # (answered from the cache after addresses_of)
        counting: frozenset[str] = getattr(owned, "exact_only", frozenset())
        for s in self.sources:
            for address in sorted(s.addresses_of(login)):
                why = s.explain(login, address)
                if not why:
                    continue
                if address in counting:
                    out.append(f"owns {address}: {why}")
                else:
                    state = "superseded" if owned is not None else "not checked"
                    out.append(f"{state}: {address}: {why}, does not count")
        return out


def with_verified_source(config: Any, inner: Any) -> SourcedLookups:
    """The runtime's lookups with the verified-senders source behind them, loaded once.
    Raises DirectoryError (a load error: startup or reload fails, saying why) when the
    database cannot be opened; later failures are the lookups' 451."""
    from policyd.verification.build import local_domains
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
    return SourcedLookups(
        inner,
        [source],
        config.directory.lookup_deadline,
        local_domains=local_domains(config),
        rules=config.addresses.rules(),
        directory_holds_verified=vc.store == "ldap",
    )
