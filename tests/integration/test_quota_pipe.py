"""policyd/quotas/resp.py's ScriptPipe against a real redis-server on loopback
(tests/servers/redis.py; skips without one, fails under CI=true): the deadline of every write
with one timer per connection, and when a call is written."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from policyd.config import config_from_dict
from policyd.core.decision import Decision, Reason, Verdict
from policyd.core.later import Later
from policyd.core.request import Request
from policyd.policy.service import PolicyService
from policyd.quotas.guard import GuardedStore
from policyd.quotas.redis_store import RedisStore
from policyd.quotas.resp import ScriptPipe, _Protocol
from policyd.quotas.store import Charge, QuotaStoreError
from policyd.runtime import build_runtime
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.timeout(60)

ECHO = "return ARGV[1]"


def test_a_later_write_left_unanswered_fails_on_its_own_deadline(
    redis_server: RedisServer,
) -> None:
    """One timer watches the oldest write: a write answered in time, then one the server never
    answers (SIGSTOP) made while the timer still runs for the first, fails one timeout after
    it was written, not never; calls answered over longer than the timeout fail nothing."""
    timeout = 0.3

    async def body() -> None:
        pipe = ScriptPipe(redis_server.url, "test", timeout)
        try:
            # answered calls spread over three timeouts: the timer fires with nothing due
            for n in range(12):
                assert await pipe.call("echo", ECHO, [], [str(n)]) == str(n)
                await asyncio.sleep(timeout / 4)
            assert await pipe.call("echo", ECHO, [], ["a"]) == "a"  # (arms a new timer)
            await asyncio.sleep(timeout / 2)
            redis_server.freeze()
            try:
                t0 = time.monotonic()
                with pytest.raises(QuotaStoreError, match="no answer within 0.3s"):
                    await asyncio.wait_for(pipe.call("echo", ECHO, [], ["b"]), 5)
                waited = time.monotonic() - t0
            finally:
                redis_server.thaw()
            assert timeout * 0.9 < waited < timeout * 3, waited
            # a new connection, and answers again
            assert await pipe.call("echo", ECHO, [], ["c"]) == "c"
        finally:
            await pipe.close()

    asyncio.run(body())


def test_one_timer_per_connection_not_one_per_write(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many writes in a row arm the connection's deadline timer once (a TimerHandle made and
    cancelled per write cost more than the rest of the write)."""
    armed: list[float] = []

    async def body() -> None:
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def counted(delay: float, cb: Any, *args: Any) -> asyncio.TimerHandle:
            if getattr(cb, "__self__", None).__class__ is _Protocol:
                armed.append(delay)
            return call_later(delay, cb, *args)

        monkeypatch.setattr(loop, "call_later", counted)
        pipe = ScriptPipe(redis_server.url, "test", 5.0)
        try:
            for n in range(50):
                assert await pipe.call("echo", ECHO, [], [str(n)]) == str(n)
        finally:
            await pipe.close()

    asyncio.run(body())
    assert len(armed) == 1, armed


def quota_service(tmp_path: Path, url: str, **quotas: Any) -> PolicyService:
    (tmp_path / "senders.txt").write_text("alice: alice@example.org\nbroken: b@example.org\n")
    data: dict[str, Any] = {
        "directory": {"backend": "file", "file": "senders.txt"},
        "profiles": {"submission": {"role": "submission", "ports": [587]}},
        "quotas": {
            "enabled": True,
            "store": url,
            "store_timeout": 2.0,
            "store_retry_interval": 60,
            "limits": {"messages_per_hour": 100},
            **quotas,
        },
    }
    return PolicyService(build_runtime(config_from_dict(data, "test.toml", tmp_path)))


def eom(login: str) -> Request:
    return Request(
        request="smtpd_access_policy",
        protocol_state="END-OF-MESSAGE",
        client_address="203.0.113.5",
        sasl_username=login,
        sender=f"{login}@example.org",
        instance="1.2.3",
        server_port="587",
        recipient_count="1",
        size="1000",
    )


def queued(svc: PolicyService) -> int:
    """Calls the store's pipe holds, not yet written."""
    guarded = svc.quotas.service.store if svc.quotas.service else None
    assert isinstance(guarded, GuardedStore)
    assert isinstance(guarded.primary, RedisStore)
    return len(guarded.primary._pipe._queue)


def test_the_store_call_is_sent_when_the_request_is_decided(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """decide_now sends the check to the pipe itself (the write goes out at the end of this
    loop iteration), not a coroutine's first step one iteration later; the decision is a
    Later on that call's future (no coroutine, no Task), awaitable as any other."""
    svc = quota_service(tmp_path, redis_server.url)

    async def body() -> None:
        try:
            for _ in range(3):
                _, result = svc.decide_now(eom("alice"))
                assert isinstance(result, Later)  # (on the store call's future)
                assert queued(svc) == 1  # (before any other code ran)
                d = await result
                assert d.verdict is Verdict.DUNNO, d
            assert svc.quotas.service is not None
            usage = await svc.quotas.service.store.usage(
                "alice", [Charge("messages_per_hour", 100, 3600.0, 1)]
            )
            assert usage[0].used == 3
        finally:
            await svc.quotas.close()

    asyncio.run(body())


@pytest.mark.parametrize("on_error", ["memory", "defer"])
def test_an_error_answer_opens_the_breaker_then_fallback_or_defer(
    tmp_path: Path, redis_server: RedisServer, on_error: str
) -> None:
    """A script that fails at the store (a corrupt counter key): the breaker opens
    (the next check asks no store), then the in-memory fallback counts, or with
    on_store_error = "defer" the message is deferred; never a permit because of the error."""
    import redis

    r = redis.Redis.from_url(redis_server.url)
    r.set("policyd:{broken}:quota", "messages_per_hour\nxx")  # (2 bytes where a double is)
    r.close()
    svc = quota_service(tmp_path, redis_server.url, on_store_error=on_error)

    async def body() -> None:
        try:
            _, result = svc.decide_now(eom("broken"))
            assert not isinstance(result, Decision) and queued(svc) == 1
            d = await result
            assert svc.quotas.service is not None
            guarded = svc.quotas.service.store
            assert isinstance(guarded, GuardedStore)
            assert guarded.unavailable and guarded.errors == 1
            _, again = svc.decide_now(eom("alice"))
            assert queued(svc) == 0  # the breaker is open: no store asked
            d2 = again if isinstance(again, Decision) else await again
            for out in (d, d2):
                if on_error == "memory":
                    assert out.verdict is Verdict.DUNNO, out
                else:
                    assert out.verdict is Verdict.DEFER, out
                    assert out.reason is Reason.QUOTA_STORE_UNAVAILABLE
            assert guarded.errors == 1
        finally:
            await svc.quotas.close()

    asyncio.run(body())
