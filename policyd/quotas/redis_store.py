"""The quota counters on a Valkey/Redis server shared by every policyd instance.

One Lua script checks every limit of a login and updates them only if all pass (store.gcra,
step for step), with the server's clock (TIME): the MX hosts' clocks do not matter, and no
other instance sees half an update. Keys: `policyd:{LOGIN}:q:NAME` (the TAT, in ms, expiring
when it has drained) and `policyd:{LOGIN}:suspended` (the reason; no expiry); the hash tag
keeps one login's keys in one Cluster slot. Only commands Redis 7.0 and Valkey 8 both have.

Every call has a deadline (`timeout`: the client's socket timeouts, no retry); a failure raises
QuotaStoreError (guard.py decides). The scripts (every message's check) go through resp.py's
ScriptPipe: the calls of one event-loop iteration in one write, one round trip; each script still
runs atomically on its own login's keys. The rest (admin commands) through redis-py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from policyd.quotas.resp import ScriptPipe
from policyd.quotas.store import (
    ALLOWED,
    MARK_TTL_MS,
    MAX_SIGNAL_MEMBERS,
    SIGNALS,
    Charge,
    Outcome,
    QuotaStoreError,
    Usage,
    key_prefix,
    usage_of,
)

CHARGE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local reason = redis.call('GET', KEYS[1])
if reason then return {2, reason} end
local n = (#ARGV - 3) / 3
local marked = ARGV[2] == '1'
if marked and redis.call('EXISTS', KEYS[n + 2]) == 1 then
  redis.call('DEL', KEYS[n + 2])
  return {3}
end
local eps = 0.001
local news = {}
for i = 1, n do
  local period = tonumber(ARGV[i * 3 + 1])
  local limit = tonumber(ARGV[i * 3 + 2])
  local cost = tonumber(ARGV[i * 3 + 3])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i + 1]))
  if tat == nil or tat < now then tat = now end
  local new = tat + cost * interval
  if new - now > period + eps then
    local used = 0
    if tat > now then used = math.ceil((tat - now) / interval - 1e-9) end
    return {1, i, used, string.format('%.3f', new - now - period)}
  end
  news[i] = new
end
if ARGV[1] == '1' then
  local parts = {}
  for i = 1, n do
    local ttl = math.ceil(news[i] - now)
    if ttl > 0 then
      redis.call('SET', KEYS[i + 1], string.format('%.3f', news[i]), 'PX', ttl)
    end
    parts[i] = ARGV[i * 3 + 1] .. ' ' .. ARGV[i * 3 + 2] .. ' ' .. ARGV[i * 3 + 3] .. ' '
      .. KEYS[i + 1]
  end
  if marked then
    redis.call('SET', KEYS[n + 3], table.concat(parts, '\\n'), 'PX', tonumber(ARGV[3]))
  end
end
return {0}
"""

#: KEYS: the rejected mark, the charged mark, then every limit key of the login (the charged
#: mark names those it counted); ARGV: the mark's lifetime (ms). Returns 1 when a counted
#: message was refunded, 0 when the mark now says "rejected" for a charge still to come.
REJECTED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local charged = redis.call('GET', KEYS[2])
if not charged then
  redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
  return 0
end
redis.call('DEL', KEYS[2])
for part in string.gmatch(charged, '[^\\n]+') do
  local period, limit, cost, key = string.match(part, '^(%S+) (%S+) (%S+) (.+)$')
  local tat = tonumber(redis.call('GET', key))
  if tat ~= nil then
    local new = tat - tonumber(cost) * tonumber(period) / tonumber(limit)
    if new <= now then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%.3f', new), 'PX', math.ceil(new - now))
    end
  end
end
return 1
"""

OBSERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[tonumber(ARGV[i])], now, ARGV[i + 1])
end
local out = {}
for k = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', KEYS[k], 0, -keep - 1)
  out[k] = redis.call('ZCARD', KEYS[k])
  if out[k] > 0 then redis.call('PEXPIRE', KEYS[k], math.ceil(window)) end
end
return out
"""

USAGE_LUA = """
local t = redis.call('TIME')
local out = {string.format('%.3f', tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000)}
for i = 1, #KEYS do
  out[i + 1] = redis.call('GET', KEYS[i]) or ''
end
return out
"""


class RedisStore:
    """QuotaStore on a Valkey/Redis server (redis.asyncio from redis-py)."""

    def __init__(self, url: str, timeout: float) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError as e:  # pragma: no cover - the package is a dependency
            raise QuotaStoreError(
                "quotas.store names a Valkey/Redis server: install python3-redis "
                "(or pip install '.[quotas]' in policyd's source tree)"
            ) from e
        self.url = url
        self.name = _safe_url(url)
        self.timeout = timeout
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError, RedisError)
        self.client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # (one short timeout: not redis-py's default of retries after a backoff)
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            self._pipe = ScriptPipe(url, self.name, timeout)
        except ValueError as e:
            raise QuotaStoreError(f"{self.name}: {e}") from None

    async def _call(self, what: str, coro: Any) -> Any:
        # (the client's socket_timeout and socket_connect_timeout bound every read and
        # connect: no asyncio.wait_for, whose task per call costs a fifth of the quota path)
        try:
            return await coro
        except self._errors as e:
            raise QuotaStoreError(f"{self.name}: {what}: {type(e).__name__}: {e}") from None

    @staticmethod
    def _keys(login: str, charges: Sequence[Charge]) -> list[str]:
        p = key_prefix(login)
        return [p + "suspended", *(p + "q:" + c.name for c in charges)]

    async def charge(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> Outcome:
        r = await self.charge_call(login, charges, commit, message)
        return self.outcome(charges, r)

    def charge_call(
        self, login: str, charges: Sequence[Charge], commit: bool, message: str = ""
    ) -> asyncio.Future[Any]:
        """charge() in two steps, for the every-message path (no coroutine of its own): the
        script's call, sent now (its future: the answer, or QuotaStoreError), then outcome()."""
        args: list[Any] = ["1" if commit else "0", "1" if message else "0", MARK_TTL_MS]
        for c in charges:
            args += [c.period * 1000, c.limit, c.cost]
        keys = self._keys(login, charges)
        if message:
            keys += self._marks(login, message)
        fut: asyncio.Future[Any] = self._pipe.call("charge", CHARGE_LUA, keys, args)
        return fut

    def outcome(self, charges: Sequence[Charge], r: Any) -> Outcome:
        """The charge script's answer `r` as an Outcome (QuotaStoreError: not one)."""
        if not isinstance(r, list) or not r:
            raise QuotaStoreError(f"{self.name}: charge: unexpected answer {r!r:.80}")
        if r[0] == 0:
            return ALLOWED
        if r[0] == 3:
            return Outcome(True, rejected_elsewhere=True)
        if r[0] == 2:
            return Outcome(False, suspended=str(r[1]))
        c = charges[int(r[1]) - 1]
        return Outcome(
            False,
            hit=c.name,
            used=int(r[2]),
            limit=c.limit,
            cost=c.cost,
            retry_after=float(r[3]) / 1000.0,
        )

    @staticmethod
    def _marks(login: str, message: str) -> list[str]:
        p = key_prefix(login)
        return [p + "rejected:" + message, p + "charged:" + message]

    async def rejected(self, login: str, message: str) -> bool:
        from policyd.config.quotas import LIMITS

        every = [Charge(n, 1, 1.0, 0) for n in LIMITS]
        keys = [*self._marks(login, message), *self._keys(login, every)[1:]]
        r = await self._pipe.call("rejected", REJECTED_LUA, keys, [MARK_TTL_MS])
        return bool(r)

    async def usage(self, login: str, charges: Sequence[Charge]) -> list[Usage]:
        keys = self._keys(login, charges)[1:]
        r = await self._pipe.call("usage", USAGE_LUA, keys, [])
        now = float(r[0])
        return [
            usage_of(c, float(raw) if raw else now, now)
            for c, raw in zip(charges, r[1:], strict=True)
        ]

    async def reset(self, login: str) -> None:
        from policyd.config.quotas import LIMITS

        p = key_prefix(login)
        await self._call("reset", self.client.delete(*(p + "q:" + n for n in LIMITS)))

    async def suspend(self, login: str, reason: str) -> None:
        await self._call("suspend", self.client.set(key_prefix(login) + "suspended", reason))

    async def unsuspend(self, login: str) -> None:
        """Also forgets the login's compromise signals (or it would be suspended again at
        once) and its suspension notice (a new suspension is notified again)."""
        p = key_prefix(login)
        keys = [p + "suspended", p + "once:suspended", *(p + "sig:" + k for k in SIGNALS)]
        await self._call("unsuspend", self.client.delete(*keys))

    async def suspension(self, login: str) -> str | None:
        r = await self._call("suspension", self.client.get(key_prefix(login) + "suspended"))
        return None if r is None else str(r)

    async def observe(
        self, login: str, events: Sequence[tuple[str, str]], window: float
    ) -> dict[str, int]:
        p = key_prefix(login)
        keys = [p + "sig:" + kind for kind in SIGNALS]
        args: list[Any] = [window * 1000, MAX_SIGNAL_MEMBERS]
        for kind, member in events:
            args += [SIGNALS.index(kind) + 1, member]
        r = await self._pipe.call("observe", OBSERVE_LUA, keys, args)
        return {kind: int(n) for kind, n in zip(SIGNALS, r, strict=True)}

    async def once(self, login: str, tag: str, period: float) -> bool:
        key = key_prefix(login) + "once:" + tag
        r = await self._call(
            "once", self.client.set(key, "1", px=max(1, int(period * 1000)), nx=True)
        )
        return bool(r)

    async def close(self) -> None:
        await self._pipe.close()
        close = getattr(self.client, "aclose", None) or self.client.close
        try:
            await asyncio.wait_for(close(), self.timeout)
        except Exception:  # noqa: BLE001 - closing a dead connection: nothing to do
            return


def _safe_url(url: str) -> str:
    """The URL without a password (never logged)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
