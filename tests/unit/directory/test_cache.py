"""The lookup cache and runner, with a test backend and a fake clock."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from policyd.config import CacheConfig
from policyd.directory.base import DirectoryUnavailable
from policyd.directory.cache import CachedLookups, LookupRunner


class Backend:
    """A blocking directory backend for tests: counts calls, can fail or hang."""

    blocking = True

    def __init__(self) -> None:
        self.data = {"alice": frozenset({"alice@example.org"})}
        self.calls = 0
        self.down = False
        self.hang = threading.Event()
        self.hang.set()
        self.delay = 0.0

    def addresses_of(self, login: str) -> frozenset[str]:
        self.calls += 1
        self.hang.wait(5)
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise DirectoryUnavailable("test: down")
        return self.data.get(login, frozenset())

    def owners_of(self, address: str) -> frozenset[str]:
        self.calls += 1
        if self.down:
            raise DirectoryUnavailable("test: down")
        return frozenset(k for k, v in self.data.items() if address in v)

    def identity_of(self, login: str) -> frozenset[str]:
        self.calls += 1
        if self.down:
            raise DirectoryUnavailable("test: down")
        return frozenset({f"login={login}"}) if login in self.data else frozenset()

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(
    cfg: CacheConfig | None = None, deadline: float = 2.0
) -> tuple[Backend, Clock, CachedLookups]:
    b, c = Backend(), Clock()
    return b, c, CachedLookups(LookupRunner(b, 2, deadline), cfg or CacheConfig(), clock=c)


def test_positive_and_negative_ttls() -> None:
    b, clock, cache = make(CacheConfig(positive_ttl=10, negative_ttl=2))

    async def go() -> None:
        assert await cache.addresses_of("alice") == frozenset({"alice@example.org"})
        assert await cache.addresses_of("alice") == frozenset({"alice@example.org"})
        assert await cache.addresses_of("nobody") == frozenset()
        assert await cache.addresses_of("nobody") == frozenset()
        assert b.calls == 2
        clock.t += 3  # negative expired, positive not
        await cache.addresses_of("nobody")
        await cache.addresses_of("alice")
        assert b.calls == 3
        clock.t += 10
        await cache.addresses_of("alice")
        assert b.calls == 4

    asyncio.run(go())
    assert cache.stats.hits == 3 and cache.stats.misses == 4


def test_size_bound_evicts_least_recently_used() -> None:
    b, _, cache = make(CacheConfig(max_entries=3))

    async def go() -> None:
        for name in ("a", "b", "c"):
            await cache.addresses_of(name)
        await cache.addresses_of("a")  # a is now most recent
        await cache.addresses_of("d")  # evicts b
        assert len(cache) == 3
        calls = b.calls
        await cache.addresses_of("a")
        assert b.calls == calls
        await cache.addresses_of("b")
        assert b.calls == calls + 1

    asyncio.run(go())


def test_one_lookup_in_flight_per_login() -> None:
    b, _, cache = make()
    b.delay = 0.2

    async def go() -> list[frozenset[str]]:
        return await asyncio.gather(*(cache.addresses_of("alice") for _ in range(20)))

    results = asyncio.run(go())
    assert all(r == frozenset({"alice@example.org"}) for r in results)
    assert b.calls == 1
    assert cache.stats.coalesced == 19


def test_stale_if_error_window() -> None:
    b, clock, cache = make(CacheConfig(positive_ttl=10, stale_if_error=100))

    async def go() -> None:
        await cache.addresses_of("alice")
        b.down = True
        clock.t += 50  # expired, within the stale window
        assert await cache.addresses_of("alice") == frozenset({"alice@example.org"})
        assert cache.stats.stale == 1
        with pytest.raises(DirectoryUnavailable):  # never looked up: no usable data
            await cache.addresses_of("bob")
        clock.t += 100  # past the window
        with pytest.raises(DirectoryUnavailable):
            await cache.addresses_of("alice")
        b.down = False
        assert await cache.addresses_of("alice") == frozenset({"alice@example.org"})

    asyncio.run(go())
    assert cache.stats.errors == 3  # every failed directory call, stale-answered or not


def test_stale_disabled_with_zero() -> None:
    b, clock, cache = make(CacheConfig(positive_ttl=1, stale_if_error=0))

    async def go() -> None:
        await cache.addresses_of("alice")
        b.down = True
        clock.t += 2
        with pytest.raises(DirectoryUnavailable):
            await cache.addresses_of("alice")

    asyncio.run(go())


def test_deadline_turns_a_hang_into_unavailable_and_pool_is_bounded() -> None:
    b, _, cache = make(CacheConfig(enabled=False), deadline=0.3)
    b.hang.clear()
    before = threading.active_count()

    async def go() -> None:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(cache.addresses_of(f"u{i}") for i in range(10)), return_exceptions=True
        )
        assert time.monotonic() - t0 < 1.5
        assert all(isinstance(r, DirectoryUnavailable) for r in results)

    asyncio.run(go())
    assert threading.active_count() - before <= 2  # the pool's size, not one per request
    b.hang.set()
    cache.runner.close()


def test_a_caller_going_away_does_not_cancel_the_lookup_for_others() -> None:
    b, _, cache = make()
    b.delay = 0.2

    async def go() -> None:
        first = asyncio.ensure_future(cache.addresses_of("alice"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(cache.addresses_of("alice"))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == frozenset({"alice@example.org"})

    asyncio.run(go())
    assert b.calls == 1
