"""policyd/quotas/resp.py's ScriptPipe against a real redis-server on loopback
(tests/servers/redis.py; skips without one, fails under CI=true): the deadline of every write
with one timer per connection, and when a call is written."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from policyd.quotas.resp import ScriptPipe, _Protocol
from policyd.quotas.store import QuotaStoreError
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
