"""The quota counters on a Valkey/Redis server shared by every policyd instance.

One Lua script checks every limit of a login and updates them only if all pass (store.gcra,
step for step), with the server's clock (TIME): the MX hosts' clocks do not matter, and no
other instance sees half an update. Keys (docs/quotas.md "Keys"):
- `policyd:{LOGIN}:quota`: all the login's TATs in one string (the limit names, a newline,
  then one little-endian double per name: exact, nothing formatted), expiring with the
  longest of them;
- `policyd:{LOGIN}:suspended`: the reason; no expiry;
- `policyd:{LOGIN}:msg:QUEUEID`: one message's mark for 10 minutes, "rejected" or what it was
  counted (the limit names, then each limit's period and amount).
The hash tag keeps one login's keys in one Cluster slot. Only commands Redis 7.0, Redis 8 and
Valkey 8 all have (and Lua's `struct` library, which they all load). The layout before
(`policyd:{LOGIN}:q:NAME`, one TAT each) is not read (passing its keys cost the server more
than the rest of the script): docs/quotas.md says what an upgrade does.

Every call has a deadline (`timeout`: the client's socket timeouts, no retry); a failure raises
QuotaStoreError (guard.py decides). The scripts (every message's check) go through resp.py's
ScriptPipe: the calls of one event-loop iteration in one write, one round trip; each script still
runs atomically on its own login's keys. The rest (admin commands) through redis-py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from policyd.config.store_url import parse_store_url
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
    used_of,
)

#: KEYS: suspended, quota, and with a queue ID the message's mark (each declared key costs the
#: server some 1.4 µs per call: no more). ARGV: commit ("1"/"0"), the limit names
#: (space-separated), then per limit its period (ms) and what this message adds to its TAT
#: (cost x (period / limit), ms, computed by the client exactly as MemoryStore does). Every key
#: in one MGET; when the stored names are this call's (the usual case) the TATs are one
#: struct.unpack; one SET with the longest TAT's expiry (stored limits this call does not name
#: are kept while their TAT is ahead, and counted in that expiry).
#: Returns 0 counted (an integer: no table to build), {1, i, backlog, retry} refused at
#: limit i, {2, reason} suspended, {3} refused by the milter before (not counted).
CHARGE_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local m = redis.call('MGET', unpack(KEYS))
if m[1] then return {2, m[1]} end
local n = (#ARGV - 2) / 2
local marked = #KEYS == 3
if marked and m[3] == 'rejected' then
  redis.call('DEL', KEYS[3])
  return {3}
end
local sig = ARGV[2]
local v = m[2]
local tats
local line = sig
if not v then
  tats = {}
  for i = 1, n do tats[i] = now end
elseif string.byte(v, #sig + 1) == 10 and string.find(v, sig, 1, true) == 1 then
  tats = {struct.unpack('<' .. string.rep('d', n), v, #sig + 2)}
else
  local nl = string.find(v, '\\n', 1, true)
  local stored, had = {}, {}
  for name in string.gmatch(string.sub(v, 1, nl - 1), '%S+') do had[#had + 1] = name end
  local got = {struct.unpack('<' .. string.rep('d', #had), v, nl + 1)}
  for k, name in ipairs(had) do stored[name] = got[k] end
  tats = {}
  local i = 0
  for name in string.gmatch(sig, '%S+') do
    i = i + 1
    tats[i] = stored[name] or now
    stored[name] = nil
  end
  for _, name in ipairs(had) do
    if stored[name] and stored[name] > now then
      line = line .. ' ' .. name
      tats[#tats + 1] = stored[name]
    end
  end
end
local longest = now
for i = 1, n do
  local tat = tats[i]
  if tat < now then tat = now end
  local period = ARGV[i * 2 + 1] + 0
  local new = tat + ARGV[i * 2 + 2]
  if new - now > period + 0.001 then
    return {1, i, string.format('%.17g', tat - now), string.format('%.3f', new - now - period)}
  end
  tats[i] = new
  if new > longest then longest = new end
end
if ARGV[1] ~= '1' then return 0 end
local all = #line > #sig and #tats or n
for i = n + 1, all do
  if tats[i] > longest then longest = tats[i] end
end
local ttl = math.ceil(longest - now)
if ttl > 0 then
  local packed = struct.pack('<' .. string.rep('d', all), unpack(tats, 1, all))
  redis.call('SET', KEYS[2], line .. '\\n' .. packed, 'PX', ttl)
end
if marked then
  redis.call('SET', KEYS[3], table.concat(ARGV, '\\n', 2), 'PX', MARK_TTL_MS)
end
return 0
""".replace("MARK_TTL_MS", str(MARK_TTL_MS))

#: KEYS: the message's mark, the login's counters; ARGV: the mark's lifetime (ms). Returns 1 when
#: a counted message was taken back (the amounts its mark lists subtracted from the TATs it
#: names), 0 when the mark now says "rejected" for a charge still to come.
REJECTED_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local counted = redis.call('GET', KEYS[1])
if not counted or counted == 'rejected' then
  redis.call('SET', KEYS[1], 'rejected', 'PX', ARGV[1])
  return 0
end
redis.call('DEL', KEYS[1])
local v = redis.call('GET', KEYS[2])
if not v then return 1 end
local nl = string.find(counted, '\\n', 1, true)
if not nl then return 1 end
local amount, names, i = {}, {}, 0
for name in string.gmatch(string.sub(counted, 1, nl - 1), '%S+') do names[#names + 1] = name end
for _, add in string.gmatch(string.sub(counted, nl + 1), '([^\\n]+)\\n([^\\n]+)') do
  i = i + 1
  amount[names[i]] = tonumber(add)
end
nl = string.find(v, '\\n', 1, true)
local line = string.sub(v, 1, nl - 1)
local had = {}
for name in string.gmatch(line, '%S+') do had[#had + 1] = name end
local tats = {struct.unpack('<' .. string.rep('d', #had), v, nl + 1)}
local longest = now
for k, name in ipairs(had) do
  if amount[name] then tats[k] = tats[k] - amount[name] end
  if tats[k] > longest then longest = tats[k] end
end
local ttl = math.ceil(longest - now)
if ttl > 0 then
  local packed = struct.pack('<' .. string.rep('d', #had), unpack(tats, 1, #had))
  redis.call('SET', KEYS[2], line .. '\\n' .. packed, 'PX', ttl)
else
  redis.call('DEL', KEYS[2])
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
local now = t[1] * 1000 + t[2] / 1000
local out = {string.format('%.17g', now)}
local v = redis.call('GET', KEYS[1])
if not v then
  for i = 1, #ARGV do out[i + 1] = '' end
  return out
end
local nl = string.find(v, '\\n', 1, true)
local had = {}
for name in string.gmatch(string.sub(v, 1, nl - 1), '%S+') do had[#had + 1] = name end
local tats = {struct.unpack('<' .. string.rep('d', #had), v, nl + 1)}
local stored = {}
for k, name in ipairs(had) do stored[name] = tats[k] end
for i = 1, #ARGV do
  out[i + 1] = stored[ARGV[i]] and string.format('%.17g', stored[ARGV[i]]) or ''
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
        try:
            tls = parse_store_url(url).tls
            self._pipe = ScriptPipe(url, self.name, timeout)
        except ValueError as e:
            raise QuotaStoreError(f"{self.name}: {e}") from None
        self.client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # (one short timeout: not redis-py's default of retries after a backoff)
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            # (redis-py before 6 checks no name by default; the URL's ssl_* reach it as they are)
            **({"ssl_check_hostname": True} if tls else {}),
        )

    async def _call(self, what: str, coro: Any) -> Any:
        # (the client's socket_timeout and socket_connect_timeout bound every read and
        # connect: no asyncio.wait_for, whose task per call costs a fifth of the quota path)
        try:
            return await coro
        except self._errors as e:
            raise QuotaStoreError(f"{self.name}: {what}: {type(e).__name__}: {e}") from None

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
        p = key_prefix(login)
        keys = [p + "suspended", p + "quota"]
        if message:
            keys.append(p + "msg:" + message)
        args: list[Any] = ["1" if commit else "0", " ".join([c.name for c in charges])]
        for c in charges:
            period = c.period * 1000
            args += [period, c.cost * (period / c.limit)]
        fut: asyncio.Future[Any] = self._pipe.call("charge", CHARGE_LUA, keys, args)
        return fut

    def outcome(self, charges: Sequence[Charge], r: Any) -> Outcome:
        """The charge script's answer `r` as an Outcome (QuotaStoreError: not one)."""
        if r == 0:
            return ALLOWED
        if not isinstance(r, list) or not r:
            raise QuotaStoreError(f"{self.name}: charge: unexpected answer {r!r:.80}")
        if r[0] == 3:
            return Outcome(True, rejected_elsewhere=True)
        if r[0] == 2:
            return Outcome(False, suspended=str(r[1]))
        c = charges[int(r[1]) - 1]
        return Outcome(
            False,
            hit=c.name,
            used=used_of(float(r[2]), 0.0, c.period * 1000 / c.limit),
            limit=c.limit,
            cost=c.cost,
            retry_after=float(r[3]) / 1000.0,
        )

    async def rejected(self, login: str, message: str) -> bool:
        p = key_prefix(login)
        keys = [p + "msg:" + message, p + "quota"]
        r = await self._pipe.call("rejected", REJECTED_LUA, keys, [MARK_TTL_MS])
        return bool(r)

    async def usage(self, login: str, charges: Sequence[Charge]) -> list[Usage]:
        p = key_prefix(login)
        r = await self._pipe.call("usage", USAGE_LUA, [p + "quota"], [c.name for c in charges])
        now = float(r[0])
        return [
            usage_of(c, float(raw) if raw else now, now)
            for c, raw in zip(charges, r[1:], strict=True)
        ]

    async def reset(self, login: str) -> None:
        from policyd.config.quotas import LIMITS

        p = key_prefix(login)
        keys = [p + "quota", *(p + "q:" + n for n in LIMITS)]
        await self._call("reset", self.client.delete(*keys))

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
