"""The quota checks' own connection to Valkey/Redis: script calls pipelined, lean (RESP2).

redis-py (redis_store.py's client for everything else) spends some 40 µs of CPU per EVALSHA
even in a pipeline, packing each argument through its encoder and awaiting each reply under its
own timeout; that alone is more than the whole RCPT path. This connection writes the script
calls of one event-loop iteration as one buffer and answers each caller's future straight from
`data_received`, in order:

- one connection per store, opened on first use (`AUTH`, `SELECT` from the URL), again after a
  failure; the URL as config/store_url.py reads it (rediss://: TLS, verified, with a private
  CA and a client certificate if the URL names them);
- a deadline per write: when the replies of a write are not all in after `timeout`, the
  connection is dropped and every call waiting on it fails (QuotaStoreError); one timer per
  connection watches the oldest write;
- EVALSHA first; a NOSCRIPT answer (a restarted server, SCRIPT FLUSH) sends that call once
  more as EVAL, which caches the script again.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Sequence
from typing import Any, cast

from policyd.config.store_url import parse_store_url
from policyd.quotas.store import QuotaStoreError


class RespError(str):
    """An error reply (`-ERR ...`), as a value: only its own call fails."""


class _Incomplete(Exception):
    pass


#: numbers' encodings (limits, periods, costs repeat from message to message); bounded. An int
#: and the float equal to it share one: Lua 5.1 (Redis, Valkey) has one number type, a double.
_NUMBERS: dict[object, str] = {}


def pack(args: Sequence[str | int | float]) -> bytes:
    """One command in RESP: an array of bulk strings (from str, int or float), built as one
    str and encoded once (twice as fast as a bytes format per argument)."""
    parts = [f"*{len(args)}\r\n"]
    _bulks(args, parts)
    return "".join(parts).encode()


def _bulks(args: Sequence[str | int | float], parts: list[str]) -> None:
    """Each argument as a RESP bulk string (str; lengths in UTF-8 bytes), onto `parts`."""
    numbers = _NUMBERS
    for a in args:
        if type(a) is str:
            n = len(a) if a.isascii() else len(a.encode())
            parts.append(f"${n}\r\n{a}\r\n")
            continue
        c = numbers.get(a)
        if c is None:
            if type(a) is not int and type(a) is not float:
                raise TypeError(f"not a str, int or float: {a!r}")
            if len(numbers) >= 4096:
                numbers.clear()
            text = str(a)
            c = numbers[a] = f"${len(text)}\r\n{text}\r\n"
        parts.append(c)


#: (script, as EVAL) -> the command's first two bulk strings: EVALSHA and the script's SHA1,
#: or EVAL and the script
_HEADS: dict[tuple[str, bool], str] = {}


def _head(script: str, again: bool) -> str:
    out = _HEADS.get((script, again))
    if out is None:
        parts: list[str] = []
        _bulks(["EVAL", script] if again else ["EVALSHA", sha(script)], parts)
        out = _HEADS[(script, again)] = "".join(parts)
    return out


def parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One reply from `buf` at `pos`: (value, position after it). Raises _Incomplete when
    `buf` ends first, ValueError on what is not RESP2."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 58:  # ":"
        return int(buf[pos + 1 : end]), end + 2
    if kind == 36:  # "$"
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            raise _Incomplete
        return buf[end + 2 : stop].decode("utf-8", "replace"), stop + 2
    if kind == 42:  # "*"
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        items = []
        p = end + 2
        for _ in range(n):
            v, p = parse(buf, p)
            items.append(v)
        return items, p
    if kind == 43:  # "+"
        return buf[pos + 1 : end].decode("utf-8", "replace"), end + 2
    if kind == 45:  # "-"
        return RespError(buf[pos + 1 : end].decode("utf-8", "replace")), end + 2
    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos : pos + 20])!r}")


class _Call:
    __slots__ = ("what", "script", "keys", "args", "fut", "again")

    def __init__(
        self,
        what: str,
        script: str,
        keys: list[Any],
        args: list[Any],
        fut: asyncio.Future[Any],
    ) -> None:
        self.what = what
        self.script = script
        self.keys = keys
        self.args = args
        self.fut = fut
        #: sent again as EVAL after a NOSCRIPT answer
        self.again = False

    def command(self) -> str:
        """The call in RESP (a str: the calls of one write are encoded together)."""
        keys, args = self.keys, self.args
        parts = [f"*{3 + len(keys) + len(args)}\r\n", _head(self.script, self.again)]
        _bulks((len(keys),), parts)
        _bulks(keys, parts)
        _bulks(args, parts)
        return "".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: ScriptPipe) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[_Call] = collections.deque()
        self.buf = b""
        self.lost = False
        #: replies read, and the deadlines of the writes: (replies read when answered, loop
        #: time it is due); one timer for the oldest (not a TimerHandle made and cancelled
        #: per write)
        self.read = 0
        self.sent = 0
        self.deadlines: collections.deque[tuple[int, float]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are no subclass of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)

    def write(self, calls: Sequence[_Call], loop: asyncio.AbstractEventLoop) -> None:
        assert self.transport is not None
        self.transport.write("".join([c.command() for c in calls]).encode())
        self.waiting.extend(calls)
        self.sent += len(calls)
        timeout = self.owner.timeout
        self.deadlines.append((self.sent, loop.time() + timeout))
        if self.timer is None:
            self.timer = loop.call_later(timeout, self.expired, loop)

    def expired(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: the oldest write still unanswered past its deadline fails the
        connection; else the timer waits for the oldest one left (if any)."""
        self.timer = None
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= self.read:
            deadlines.popleft()
        if not deadlines:
            return
        left = deadlines[0][1] - loop.time()
        if left <= 0:
            self.fail(TimeoutError(f"no answer within {self.owner.timeout:g}s"))
            return
        self.timer = loop.call_later(left, self.expired, loop)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        waiting = self.waiting
        try:
            while waiting:
                value, pos = parse(buf, pos)
                call = waiting.popleft()
                self.read += 1
                self.owner.answered(call, value)
        except _Incomplete:
            pass
        except ValueError as e:
            self.fail(e)
            return
        if not waiting and pos < len(buf):  # (an answer nobody asked for: out of step)
            self.fail(
                ValueError(f"unexpected data from the server: {bytes(buf[pos : pos + 20])!r}")
            )
            return
        self.buf = buf[pos:]
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= self.read:
            deadlines.popleft()  # (the timer, when it fires, looks at the oldest left)

    def fail(self, e: BaseException) -> None:
        """Drop the connection: every call waiting on it fails."""
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        waiting, self.waiting = self.waiting, collections.deque()
        for call in waiting:
            self.owner.failed(call, e)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("connection closed by the server"))


class ScriptPipe:
    """Lua script calls to one Valkey/Redis server, those of one loop iteration in one write."""

    def __init__(self, url: str, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self._target = parse_store_url(url)
        self._queue: list[_Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None

    def call(self, what: str, script: str, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """The script's answer (a future), or QuotaStoreError."""
        loop = self._loop
        if loop is None or loop.is_closed():
            # (once: asyncio.get_running_loop() makes a getpid system call)
            loop = self._loop = asyncio.get_running_loop()
            self._proto = self._connecting = None  # (a closed loop's: gone with it)
            self._queue = []
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(what, script, keys, args, fut))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        loop = self._loop
        calls = [c for c in self._queue if not c.fut.done()]
        self._queue = []
        if not calls or loop is None:
            return
        proto = self._proto
        if proto is not None and not proto.lost:
            proto.write(calls, loop)
            return
        # (not connected: the calls wait for the connection, which one task makes)
        self._queue = calls
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        t = self._target
        try:
            proto = _Protocol(self)
            # (made here: a CA file unreadable now fails the calls, the guard decides)
            tls = t.ssl_context()
            async with asyncio.timeout(self.timeout):
                if t.path:
                    await loop.create_unix_connection(lambda: proto, t.path)
                else:
                    await loop.create_connection(
                        lambda: proto,
                        t.host,
                        t.port,
                        ssl=tls,
                        server_hostname=t.host if tls else None,
                    )
                setup: list[list[Any]] = []
                if t.password:
                    auth = [t.username, t.password] if t.username else [t.password]
                    setup.append(["AUTH", *auth])
                if t.db:
                    setup.append(["SELECT", t.db])
                for cmd in setup:
                    fut: asyncio.Future[Any] = loop.create_future()
                    proto.write([_Setup(cmd[0], fut, cmd)], loop)
                    answer = await fut
                    if isinstance(answer, RespError):
                        raise ConnectionError(f"{cmd[0]}: {answer}")
        except Exception as e:  # noqa: BLE001 - every waiting call fails, none hangs
            self._connecting = None
            proto.fail(e)
            queue, self._queue = self._queue, []
            for call in queue:
                self.failed(call, e)
            return
        self._proto = proto
        self._connecting = None
        self._flush()

    def answered(self, call: _Call, value: Any) -> None:
        fut = call.fut
        if fut.done():  # (its caller gave up)
            return
        if isinstance(value, RespError):
            if value.startswith("NOSCRIPT") and not call.again:
                call.again = True
                self._queue.append(call)
                if len(self._queue) == 1:
                    fut.get_loop().call_soon(self._flush)
                return
            fut.set_exception(QuotaStoreError(f"{self.name}: {call.what}: {value}"))
            return
        fut.set_result(value)

    def failed(self, call: _Call, e: BaseException) -> None:
        if not call.fut.done():
            why = f"{self.name}: {call.what}: {type(e).__name__}: {e}"
            call.fut.set_exception(QuotaStoreError(why))

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


class _Setup(_Call):
    """AUTH / SELECT: sent as they are."""

    def __init__(self, what: str, fut: asyncio.Future[Any], cmd: list[Any]) -> None:
        super().__init__(what, "", [], [], fut)
        self.cmd = cmd

    __slots__ = ("cmd",)

    def command(self) -> str:
        parts = [f"*{len(self.cmd)}\r\n"]
        _bulks(self.cmd, parts)
        return "".join(parts)


_SHAS: dict[str, str] = {}


def sha(script: str) -> str:
    """The script's SHA1, as EVALSHA names it."""
    out = _SHAS.get(script)
    if out is None:
        out = _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    return out
