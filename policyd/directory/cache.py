"""Asynchronous access to a directory: a bounded thread pool with a deadline, and a cache.

Everything here runs on the event loop thread (the milter submits its lookups to the same
loop), so the cache needs no lock: there is no `await` between a read and the write it guards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from policyd.config import CacheConfig
from policyd.directory.base import Directory, DirectoryUnavailable

log: Final = logging.getLogger(__name__)


class LookupRunner:
    """Runs a (possibly blocking) directory's calls off the event loop, each within a deadline.

    The pool is bounded: a hung directory ties up at most `threads` threads; calls queued behind
    them time out at the deadline like the rest, and their work items are skipped once dequeued.
    """

    def __init__(self, directory: Directory, threads: int, deadline: float) -> None:
        self.directory = directory
        self.deadline = deadline
        #: called with (seconds, ok) after each call that went to a blocking directory (metrics)
        self.observer: Callable[[float, bool], None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        if directory.blocking:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="policyd-lookup"
            )

    async def call(self, fn: Callable[[str], frozenset[str]], arg: str) -> frozenset[str]:
        if self._pool is None:
            return fn(arg)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        fut = loop.run_in_executor(self._pool, fn, arg)
        # asyncio.wait, not wait_for or timeout(): no cancellation to turn into a timeout (see
        # policyd/build.py: Debian's mypyc 1.15 would let the CancelledError out instead)
        try:
            await asyncio.wait((fut,), timeout=self.deadline)
        finally:
            if not fut.done():
                fut.cancel()  # (timed out, or the caller went away: skipped if not started)
            ok = not fut.cancelled() and fut.exception() is None
            if self.observer is not None:
                self.observer(time.perf_counter() - started, ok)
        if fut.cancelled():
            raise DirectoryUnavailable(f"no answer within {self.deadline:g}s")
        return fut.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.directory.close()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    stale: int = 0
    coalesced: int = 0


class Kind(enum.IntEnum):
    """What a cache entry answers. (An IntEnum: hashed as an int, in every cache key.)"""

    ADDRESSES = 0  # addresses_of(login)
    OWNERS = 1  # owners_of(key)
    IDENTITY = 2  # identity_of(login)
    VALUES = 3  # values_of(attr, login): the key is "attr\0login"


class _Entry:
    __slots__ = ("value", "fetched", "expires")

    def __init__(self, value: frozenset[str], fetched: float, expires: float) -> None:
        self.value, self.fetched, self.expires = value, fetched, expires


class CachedLookups:
    """addresses_of / owners_of / identity_of with positive and negative TTLs, an LRU size
    bound, one lookup in flight per key, and stale-if-error: while the directory is down,
    data fetched at most `stale_if_error` seconds ago is still used."""

    def __init__(
        self,
        runner: LookupRunner,
        cfg: CacheConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.cfg = cfg
        self.clock = clock
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[Kind, str], _Entry] = OrderedDict()
        self._inflight: dict[tuple[Kind, str], asyncio.Future[frozenset[str]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def take_over(self, old: CachedLookups, keep_entries: bool) -> None:
        """On reload: keep the cumulative counters, and the warm entries when the directory
        is the same one (the new pool and settings stay this object's)."""
        self.stats = old.stats
        if keep_entries:
            self._entries = old._entries

    # fast path: a fresh hit answered without a task switch
    def peek_addresses(self, login: str) -> frozenset[str] | None:
        return self._peek((Kind.ADDRESSES, login))

    def peek_owners(self, key: str, include_verified: bool = True) -> frozenset[str] | None:
        return self._peek((Kind.OWNERS, key))

    def peek_identity(self, login: str) -> frozenset[str] | None:
        return self._peek((Kind.IDENTITY, login))

    def peek_values(self, attr: str, login: str) -> frozenset[str] | None:
        return self._peek((Kind.VALUES, f"{attr}\0{login}"))

    def _peek(self, k: tuple[Kind, str]) -> frozenset[str] | None:
        if not self.cfg.enabled:
            return None
        e = self._entries.get(k)
        if e is None or e.expires < self.clock():
            return None
        self.stats.hits += 1
        self._entries.move_to_end(k)
        return e.value

    async def addresses_of(self, login: str) -> frozenset[str]:
        return await self._get(Kind.ADDRESSES, login, self.runner.directory.addresses_of)

    async def owners_of(self, key: str, include_verified: bool = True) -> frozenset[str]:
        return await self._get(Kind.OWNERS, key, self.runner.directory.owners_of)

    async def identity_of(self, login: str) -> frozenset[str]:
        return await self._get(Kind.IDENTITY, login, self.runner.directory.identity_of)

    async def values_of(self, attr: str, login: str) -> frozenset[str]:
        """An attribute's values in the login's entry (a directory with `values_of`: LDAP)."""
        return await self._get(Kind.VALUES, f"{attr}\0{login}", self._values)

    def _values(self, key: str) -> frozenset[str]:
        attr, _, login = key.partition("\0")
        # (only LDAP has it; [quotas] ldap_attribute needs directory.backend = "ldap")
        fn: Callable[[str, str], frozenset[str]] = getattr(self.runner.directory, "values_of")  # noqa: B009
        return fn(attr, login)

    def close(self) -> None:
        self.runner.close()

    async def _get(
        self, kind: Kind, key: str, fn: Callable[[str], frozenset[str]]
    ) -> frozenset[str]:
        if not self.cfg.enabled:
            try:
                return await self.runner.call(fn, key)
            except DirectoryUnavailable:
                self.stats.errors += 1
                raise
        k = (kind, key)
        hit = self._peek(k)
        if hit is not None:
            return hit
        pending = self._inflight.get(k)
        if pending is None:
            # The lookup runs as its own task: a caller that goes away (client disconnect)
            # does not cancel it for the others waiting on the same key.
            self.stats.misses += 1
            pending = asyncio.ensure_future(self._fetch(k, fn))
            pending.add_done_callback(_consume)
            self._inflight[k] = pending
        else:
            self.stats.coalesced += 1
        return await asyncio.shield(pending)

    async def _fetch(
        self, k: tuple[Kind, str], fn: Callable[[str], frozenset[str]]
    ) -> frozenset[str]:
        stale: _Entry | None = None
        try:  # (no return inside a try with a finally: see policyd/build.py)
            value = await self.runner.call(fn, k[1])
        except DirectoryUnavailable as e:
            self.stats.errors += 1
            stale = self._entries.get(k)
            now = self.clock()
            if stale is None or now - stale.fetched > self.cfg.stale_if_error:
                raise
            self.stats.stale += 1
            log.info(
                "directory unavailable (%s); %s answered from data %.0fs old",
                e,
                key_repr(k[0]),
                now - stale.fetched,
            )
        finally:
            self._inflight.pop(k, None)
        if stale is not None:
            return stale.value
        now = self.clock()
        ttl = self.cfg.positive_ttl if value else self.cfg.negative_ttl
        self._entries[k] = _Entry(value, now, now + ttl)
        self._entries.move_to_end(k)
        while len(self._entries) > self.cfg.max_entries:
            self._entries.popitem(last=False)
        return value


def _consume(task: asyncio.Future[frozenset[str]]) -> None:
    """Mark a lookup's error as seen: its callers may all have gone away."""
    if not task.cancelled():
        task.exception()


def key_repr(kind: Kind) -> str:
    return ("addresses_of", "owners_of", "identity_of", "values_of")[kind]
