"""The quota algorithm on both stores: the in-memory one and a real redis-server on loopback
(tests/servers/redis.py; skips without one, fails under CI=true). The same tests, row for row:
the Lua script must do what store.gcra does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from policyd.quotas.store import Charge, MemoryStore, QuotaStore
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.timeout(60)

Factory = Callable[[], QuotaStore]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Factory]:
    if request.param == "memory":
        yield MemoryStore
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    from policyd.quotas.redis_store import RedisStore

    yield lambda: RedisStore(server.url, 2.0)


def run(make: Factory, body: Callable[[QuotaStore], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        store = make()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def per(limit: int, period: float, cost: int = 1, name: str = "m") -> Charge:
    return Charge(name, limit, period, cost)


def test_limit_then_refused_with_the_numbers(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        for _ in range(3):
            assert (await s.charge("alice", [per(3, 3600)], True)).allowed
        out = await s.charge("alice", [per(3, 3600)], True)
        assert not out.allowed and out.suspended is None
        assert (out.hit, out.used, out.limit, out.cost) == ("m", 3, 3, 1)
        assert 1100 < out.retry_after <= 1200  # one interval (3600 / 3 s) until it fits
        assert (await s.charge("bob", [per(3, 3600)], True)).allowed  # per login

    run(make_store, body)


def test_all_limits_or_none_are_updated(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        both = [per(10, 3600, name="a"), per(2, 3600, name="b")]
        assert (await s.charge("alice", both, True)).allowed
        assert (await s.charge("alice", both, True)).allowed
        out = await s.charge("alice", both, True)
        assert (out.allowed, out.hit) == (False, "b")
        used = {u.name: u.used for u in await s.usage("alice", both)}
        assert used == {"a": 2, "b": 2}  # the refused message counted nowhere

    run(make_store, body)


def test_a_check_without_commit_counts_nothing(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        for _ in range(5):
            assert (await s.charge("alice", [per(1, 3600)], False)).allowed
        assert (await s.charge("alice", [per(1, 3600)], True)).allowed
        assert not (await s.charge("alice", [per(1, 3600)], False)).allowed

    run(make_store, body)


def test_costs_count_recipients(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        assert (await s.charge("alice", [per(10, 86400, 4)], True)).allowed
        assert (await s.charge("alice", [per(10, 86400, 4)], True)).allowed
        out = await s.charge("alice", [per(10, 86400, 4)], True)
        assert (out.allowed, out.used, out.cost) == (False, 8, 4)
        assert (await s.charge("alice", [per(10, 86400, 2)], True)).allowed
        out = await s.charge("alice", [per(10, 86400, 11)], True)  # never fits
        assert not out.allowed

    run(make_store, body)


def test_the_counter_drains_with_time(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        lim = [per(2, 0.6)]  # one every 0.3 s, two at once
        assert (await s.charge("alice", lim, True)).allowed
        assert (await s.charge("alice", lim, True)).allowed
        assert not (await s.charge("alice", lim, True)).allowed
        await asyncio.sleep(0.4)
        assert (await s.charge("alice", lim, True)).allowed
        assert not (await s.charge("alice", lim, True)).allowed
        await asyncio.sleep(0.7)
        assert [u.used for u in await s.usage("alice", lim)] == [0]

    run(make_store, body)


def test_suspension_refuses_before_any_limit(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        await s.suspend("alice", "by test")
        assert await s.suspension("alice") == "by test"
        out = await s.charge("alice", [per(100, 3600)], True)
        assert (out.allowed, out.suspended) == (False, "by test")
        assert [u.used for u in await s.usage("alice", [per(100, 3600)])] == [0]
        await s.unsuspend("alice")
        assert await s.suspension("alice") is None
        assert (await s.charge("alice", [per(100, 3600)], True)).allowed

    run(make_store, body)


def test_reset_forgets_the_counters(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        from policyd.config.quotas import LIMITS

        lim = [Charge(n, 1, p, 1) for n, (p, _) in LIMITS.items()]
        assert (await s.charge("alice", lim, True)).allowed
        assert not (await s.charge("alice", lim, True)).allowed
        await s.reset("alice")
        assert (await s.charge("alice", lim, True)).allowed

    run(make_store, body)


def test_concurrent_checks_never_exceed_the_limit(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        lim = [per(20, 3600, name="h"), per(25, 86400, name="d")]
        results = await asyncio.gather(*(s.charge("alice", lim, True) for _ in range(60)))
        assert sum(r.allowed for r in results) == 20
        assert {r.hit for r in results if not r.allowed} == {"h"}

    run(make_store, body)


def test_redis_keys_carry_the_login_hash_tag_and_expire(redis_server: RedisServer) -> None:
    """One key per login for all its limits, expiring with the longest TAT: a limit whose TAT
    is far ahead keeps the key (and the short limit's TAT in it) alive."""
    import redis

    from policyd.quotas.redis_store import RedisStore

    hour = per(10, 3600, name="messages_per_hour")  # one interval: 360 s
    short = per(1000, 60, name="short")  # one interval: 60 ms

    async def body() -> None:
        s = RedisStore(redis_server.url, 2.0)
        try:
            assert (await s.charge("alice@example.org", [hour, short], True)).allowed
            assert (await s.charge("bob", [per(10, 60, name="short")], True)).allowed
        finally:
            await s.close()

    asyncio.run(body())
    r = redis.Redis.from_url(redis_server.url)
    try:
        assert sorted(r.keys("*")) == [b"policyd:{alice@example.org}:quota", b"policyd:{bob}:quota"]
        assert 300_000 < r.pttl("policyd:{alice@example.org}:quota") <= 360_000  # the longest
        assert 0 < r.pttl("policyd:{bob}:quota") <= 6_000
        value = r.get("policyd:{alice@example.org}:quota")
        assert isinstance(value, bytes) and value.startswith(b"messages_per_hour short\n")
        assert len(value) == len(b"messages_per_hour short\n") + 16  # two doubles, no more
        assert b"alice" not in value  # (no personal data beyond the login in the key name)
    finally:
        r.close()


def test_redis_counter_key_outlives_a_drained_limit_by_the_longest(
    redis_server: RedisServer,
) -> None:
    """Expiry: the key's TTL always covers the TAT furthest ahead, even when the call that
    writes it is one whose own TATs are short (a limit set changed: the stored limit this call
    does not name is kept while it is ahead, and still counts when named again)."""
    import redis

    from policyd.quotas.redis_store import RedisStore

    day = per(2, 86400, name="messages_per_day")  # one interval: 12 h
    short = per(1000, 60, name="short")

    async def body() -> None:
        s = RedisStore(redis_server.url, 2.0)
        try:
            assert (await s.charge("alice", [day, short], True)).allowed
            for _ in range(3):  # (only the short limit named: the day's TAT stays)
                assert (await s.charge("alice", [short], True)).allowed
            r = redis.Redis.from_url(redis_server.url)
            try:
                assert 43_000_000 < r.pttl("policyd:{alice}:quota") <= 43_200_000
            finally:
                r.close()
            used = {u.name: u.used for u in await s.usage("alice", [day, short])}
            assert used == {"messages_per_day": 1, "short": 4}
            assert (await s.charge("alice", [short, day], True)).allowed  # (another order)
            out = await s.charge("alice", [day, short], True)
            assert (out.allowed, out.hit, out.used) == (False, "messages_per_day", 2)
        finally:
            await s.close()

    asyncio.run(body())


def test_redis_stores_the_tats_exactly_with_fractional_intervals(
    redis_server: RedisServer,
) -> None:
    """100,000,000 a day is 0.864 ms a message, 100,000,000 an hour 0.036 ms, 7,000,000 an
    hour 0.514285714... ms: the TATs are stored as doubles, nothing rounded to decimals on the
    way, so N messages add to them exactly what MemoryStore adds, bit for bit."""
    import struct

    import redis

    from policyd.quotas.redis_store import RedisStore

    lim = [
        per(100_000_000, 86400, name="messages_per_day"),
        per(100_000_000, 3600, name="messages_per_hour"),
        per(7_000_000, 3600, name="odd"),
    ]
    # (first a message costing a million: every TAT well ahead of the clock, so the N
    # messages after it add to it instead of starting from "now")
    ahead = [Charge(c.name, c.limit, c.period, 1_000_000) for c in lim]
    n = 100
    r = redis.Redis.from_url(redis_server.url)

    def stored() -> tuple[float, ...]:
        value = r.get("policyd:{alice}:quota")
        assert isinstance(value, bytes)
        line, packed = value.split(b"\n", 1)
        assert line == b"messages_per_day messages_per_hour odd"
        return struct.unpack("<3d", packed)

    async def body() -> tuple[tuple[float, ...], tuple[float, ...]]:
        s = RedisStore(redis_server.url, 2.0)
        try:
            assert (await s.charge("alice", ahead, True)).allowed
            first = stored()
            for _ in range(n):
                assert (await s.charge("alice", lim, True)).allowed
            return first, stored()
        finally:
            await s.close()

    try:
        first, last = asyncio.run(body())
        now = float(r.eval("local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000", 0))
    finally:
        r.close()
    mem = MemoryStore(clock=lambda: now / 1000)
    for c, tat in zip(lim, first, strict=True):
        mem._tat[("alice", c.name)] = tat
    for _ in range(n):
        assert mem.charge_now("alice", lim, True).allowed
    assert last == tuple(mem._tat[("alice", c.name)] for c in lim)  # (exactly)
    ulp = 2.0**-11  # (of a double near 1.8e12: each sum rounds by half of it at most)
    assert abs(last[0] - first[0] - n * 0.864) < n * ulp
    assert abs(last[2] - first[2] - n * 3600_000 / 7_000_000) < n * ulp


def test_redis_refund_restores_the_tats_exactly_in_either_order(
    redis_server: RedisServer,
) -> None:
    """The milter refused a counted message: its amounts come off the TATs it added to (bit
    for bit what they were before), the key's expiry follows the longest TAT left, and a
    refund that drains everything deletes the key. The other order: the rejection first, then
    the charge, counts nothing and leaves no counter."""
    import redis

    from policyd.quotas.redis_store import RedisStore

    hour = per(3, 3600, name="messages_per_hour")
    rcpts = per(100_000_000, 86400, 7, name="recipients_per_day")
    r = redis.Redis.from_url(redis_server.url)

    async def body() -> None:
        s = RedisStore(redis_server.url, 2.0)
        try:
            assert (await s.charge("alice", [hour, rcpts], True, "Q1")).allowed
            before = r.get("policyd:{alice}:quota")
            assert (await s.charge("alice", [hour, rcpts], True, "Q2")).allowed
            assert r.pttl("policyd:{alice}:quota") > 2_000_000  # (two of 1,200 s)
            assert await s.rejected("alice", "Q2")
            assert r.get("policyd:{alice}:quota") == before
            assert 1_100_000 < r.pttl("policyd:{alice}:quota") <= 1_200_000
            assert r.exists("policyd:{alice}:msg:Q2") == 0
            assert await s.rejected("alice", "Q1")
            assert r.exists("policyd:{alice}:quota") == 0  # (nothing left ahead)
            # the rejection first: the charge after it counts nothing
            assert not await s.rejected("bob", "Q3")
            assert r.get("policyd:{bob}:msg:Q3") == b"rejected"
            out = await s.charge("bob", [hour, rcpts], True, "Q3")
            assert (out.allowed, out.rejected_elsewhere) == (True, True)
            assert r.exists("policyd:{bob}:quota") == 0
            assert r.exists("policyd:{bob}:msg:Q3") == 0  # (used up)
        finally:
            await s.close()

    try:
        asyncio.run(body())
    finally:
        r.close()


def test_redis_the_old_layouts_keys_are_not_read_and_reset_deletes_them(
    redis_server: RedisServer,
) -> None:
    """The layout before one key per login (`policyd:{LOGIN}:q:NAME`, a `%.3f` TAT each):
    its counters are not read (docs/quotas.md "Upgrading": a login's counters start from
    zero once; they expire by themselves within the longest period), `quota reset` deletes
    them too."""
    import redis

    from policyd.quotas.redis_store import RedisStore

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    far = f"{time.time() * 1000 + 3_000_000:.3f}"  # (what the old script wrote: full)
    r.set("policyd:{alice}:q:messages_per_hour", far, px=3_000_000)
    lim = [per(1, 3600, name="messages_per_hour")]

    async def body() -> None:
        s = RedisStore(redis_server.url, 2.0)
        try:
            assert (await s.charge("alice", lim, True)).allowed
            assert [u.used for u in await s.usage("alice", lim)] == [1]
            await s.reset("alice")
        finally:
            await s.close()

    try:
        asyncio.run(body())
        assert r.keys("*") == []
    finally:
        r.close()


def test_redis_store_uses_the_server_clock(redis_server: RedisServer) -> None:
    """Two stores (two MX hosts) share one counter, whatever their own clocks say."""
    from policyd.quotas.redis_store import RedisStore

    async def body() -> None:
        a, b = RedisStore(redis_server.url, 2.0), RedisStore(redis_server.url, 2.0)
        try:
            lim = [per(4, 3600)]
            for s in (a, b, a, b):
                assert (await s.charge("alice", lim, True)).allowed
            assert not (await a.charge("alice", lim, True)).allowed
            assert not (await b.charge("alice", lim, True)).allowed
        finally:
            await a.close()
            await b.close()

    started = time.monotonic()
    asyncio.run(body())
    assert time.monotonic() - started < 5


def test_compromise_signals_count_distinct_members_in_the_window(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        counts = await s.observe("alice", [("net", "192.0.2.0/24"), ("msg", "m1")], 0.5)
        assert counts == {"net": 1, "msg": 1, "not_owned": 0, "null": 0, "country": 0}
        counts = await s.observe("alice", [("net", "192.0.2.0/24"), ("msg", "m2")], 0.5)
        assert (counts["net"], counts["msg"]) == (1, 2)  # the same network once
        counts = await s.observe("alice", [("net", "198.51.100.0/24"), ("null", "m3")], 0.5)
        assert (counts["net"], counts["null"]) == (2, 1)
        assert (await s.observe("bob", [], 0.5))["net"] == 0  # per login
        await asyncio.sleep(0.6)
        empty = {"net": 0, "msg": 0, "not_owned": 0, "null": 0, "country": 0}
        assert await s.observe("alice", [], 0.5) == empty

    run(make_store, body)


def test_once_per_period(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        assert await s.once("alice", "suspended", 0.4)
        assert not await s.once("alice", "suspended", 0.4)
        assert await s.once("alice", "over:messages_per_hour", 0.4)
        assert await s.once("bob", "suspended", 0.4)
        await asyncio.sleep(0.5)
        assert await s.once("alice", "suspended", 0.4)

    run(make_store, body)


def test_a_message_the_milter_refused_after_it_was_counted_is_taken_back(
    make_store: Factory,
) -> None:
    async def body(s: QuotaStore) -> None:
        lim = [per(2, 3600, name="messages_per_hour"), per(10, 86400, 3, "recipients_per_day")]
        assert (await s.charge("alice", lim, True, "Q1")).allowed
        assert (await s.charge("alice", lim, True, "Q2")).allowed
        assert await s.rejected("alice", "Q2")  # counted, then refused by the milter
        assert [u.used for u in await s.usage("alice", lim)] == [1, 3]
        assert not await s.rejected("alice", "Q2")  # (taken back once only)
        assert (await s.charge("alice", lim, True, "Q3")).allowed
        assert not (await s.charge("alice", lim, True, "Q4")).allowed

    run(make_store, body)


def test_a_message_the_milter_refused_first_is_never_counted(make_store: Factory) -> None:
    async def body(s: QuotaStore) -> None:
        lim = [per(1, 3600, name="messages_per_hour")]
        assert not await s.rejected("alice", "Q1")  # the milter's verdict came first
        out = await s.charge("alice", lim, True, "Q1")
        assert (out.allowed, out.rejected_elsewhere) == (True, True)
        assert [u.used for u in await s.usage("alice", lim)] == [0]
        assert (await s.charge("alice", lim, True, "Q2")).allowed
        assert not (await s.charge("alice", lim, True, "Q3")).allowed
        assert not (await s.charge("bob", lim, True, "Q1")).rejected_elsewhere  # per login

    run(make_store, body)


def test_redis_calls_of_one_loop_iteration_share_one_round_trip(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks of one event-loop iteration go as one pipeline (one round trip), each
    script still atomic per login; one call's error fails that call only."""
    import redis

    from policyd.quotas.redis_store import RedisStore
    from policyd.quotas.resp import _Protocol
    from policyd.quotas.store import QuotaStoreError

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.set("policyd:{broken}:quota", "h\nxx")  # (2 bytes where a double is: an error)
    r.close()

    async def body() -> None:
        s = RedisStore(redis_server.url, 2.0)
        sent: list[int] = []
        write = _Protocol.write

        def counted(self: _Protocol, calls: Any, loop: Any) -> None:
            sent.append(len(calls))
            write(self, calls, loop)

        monkeypatch.setattr(_Protocol, "write", counted)
        try:
            lim = [per(20, 3600, name="h")]
            await s.charge("warm", lim, False)  # (the first call loads the script)
            sent.clear()
            calls = [s.charge(f"u{n % 3}", lim, True) for n in range(90)]
            calls.append(s.charge("broken", lim, True))
            out = await asyncio.gather(*calls, return_exceptions=True)
            assert sent == [91]
            assert isinstance(out[-1], QuotaStoreError)
            assert "charge" in str(out[-1]) and "too short" in str(out[-1]), str(out[-1])
            ok = [o for o in out[:-1] if not isinstance(o, BaseException)]
            assert len(ok) == 90
            assert sum(o.allowed for o in ok) == 60  # 20 per login, the rest refused
            assert {o.hit for o in ok if not o.allowed} == {"h"}
        finally:
            await s.close()

    asyncio.run(body())


def test_redis_scripts_are_loaded_again_after_the_server_lost_them(
    redis_server: RedisServer,
) -> None:
    """NOSCRIPT (a restarted server, SCRIPT FLUSH): the scripts are loaded again and the
    refused calls sent once more; nothing is counted twice."""
    import redis

    from policyd.quotas.redis_store import RedisStore

    async def body() -> None:
        s = RedisStore(redis_server.url, 2.0)
        try:
            lim = [per(10, 3600, name="h")]
            for _ in range(2):
                r = redis.Redis.from_url(redis_server.url)
                r.script_flush()
                r.close()
                out = await asyncio.gather(*(s.charge("flushed", lim, True) for _ in range(3)))
                assert all(o.allowed for o in out)
            usage = await s.usage("flushed", lim)
            assert usage[0].used == 6
        finally:
            await s.close()

    asyncio.run(body())


def test_redis_store_password_database_and_a_new_connection_after_a_kill(
    redis_server: RedisServer,
) -> None:
    """The checks' own connection: AUTH and SELECT from the URL (a wrong password fails the
    call, never hangs); a killed server fails the waiting calls at once, and the next call
    after its return connects again."""
    import redis

    from policyd.quotas.redis_store import RedisStore
    from policyd.quotas.store import QuotaStoreError

    first = redis.Redis.from_url(redis_server.url)
    first.config_set("requirepass", "s3cr:t")
    first.close()
    url = redis_server.url.replace("redis://", "redis://:s3cr%3At@").rsplit("/", 1)[0] + "/2"
    admin = redis.Redis.from_url(url, decode_responses=True)
    bad = redis_server.url.replace("redis://", "redis://:wrong@")
    lim = [per(5, 3600, name="h")]

    async def body() -> None:
        s, wrong = RedisStore(url, 2.0), RedisStore(bad, 2.0)
        try:
            assert (await s.charge("alice", lim, True)).allowed
            assert admin.exists("policyd:{alice}:quota") == 1  # (in database 2)
            with pytest.raises(QuotaStoreError) as e:
                await wrong.charge("alice", lim, True)
            assert "AUTH" in str(e.value) and "wrong" not in str(e.value)
            redis_server.kill()
            t0 = time.monotonic()
            with pytest.raises(QuotaStoreError):
                await s.charge("alice", lim, True)
            assert time.monotonic() - t0 < 1.0
            redis_server.start()
            fresh = redis.Redis.from_url(redis_server.url)  # (no password yet)
            fresh.config_set("requirepass", "s3cr:t")
            fresh.close()
            assert (await s.charge("alice", lim, True)).allowed  # (a new, empty server)
            assert (await s.usage("alice", lim))[0].used == 1
        finally:
            await s.close()
            await wrong.close()

    try:
        asyncio.run(body())
    finally:
        admin.close()


def test_redis_store_on_a_unix_socket(tmp_path: Any, redis_server: RedisServer) -> None:
    """`store = "unix:///path?db=N"`: the checks' own connection and redis-py's alike. (A
    second server of its own, with a socket; `redis_server` checks the tier's requirements.)"""
    import redis

    from policyd.quotas.redis_store import RedisStore

    sock = tmp_path / "redis.sock"
    server = RedisServer(
        tmp_path / "r", wrap=lambda c: [*c, "--unixsocket", str(sock), "--unixsocketperm", "700"]
    ).start()
    url = f"unix://{sock}?db=1"
    lim = [per(2, 3600, name="h")]

    async def body() -> None:
        s = RedisStore(url, 2.0)
        try:
            assert [(await s.charge("alice", lim, True)).allowed for _ in range(3)] == [
                True,
                True,
                False,
            ]
            await s.suspend("bob", "test")  # (redis-py, the same socket and database)
            assert (await s.charge("bob", lim, True)).suspended == "test"
        finally:
            await s.close()

    try:
        asyncio.run(body())
        r = redis.Redis(unix_socket_path=str(sock), db=1)
        assert r.exists("policyd:{alice}:quota") == 1
        r.close()
    finally:
        server.stop()
