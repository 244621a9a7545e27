"""The asyncio policy server: listeners, connections, limits, drain on stop.

A thin adapter: bytes go through protocol.RequestParser, requests through PolicyService, and
Decisions leave as action lines. Replies on one connection go out in request order, even when a
later request is decided from cache before an earlier one's directory lookup returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from policyd.config import ServerConfig, parse_listen
from policyd.decision import Decision, Reason, Verdict
from policyd.engine import to_action
from policyd.observability import log_decision
from policyd.protocol import ProtocolError, RequestParser, encode_action
from policyd.service import PolicyService

log = logging.getLogger(__name__)

#: Called after every decision: (attrs, profile name, decision, seconds).
DecisionHook = Callable[[Mapping[str, str], str, Decision, float], None]

#: Stop reading from a client that has this many requests waiting for a directory answer
#: (a pipelining client cannot make us queue without bound).
MAX_PENDING_PER_CONNECTION = 64

_INTERNAL_ERROR = Decision(
    Verdict.DEFER, Reason.DIRECTORY_UNAVAILABLE, "451 4.3.0 Temporary policy failure, please try again later"
)


class PolicyServer:
    def __init__(
        self,
        service: PolicyService,
        config: ServerConfig,
        hooks: Iterable[DecisionHook] = (),
    ) -> None:
        self.service = service
        self.config = config
        self.hooks: list[DecisionHook] = [log_decision, *hooks]
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self.draining = False
        self.refused = 0
        self.addresses: list[str] = []

    # listeners ---------------------------------------------------------------------------

    async def start(
        self, listen: Iterable[str] = (), sockets: Iterable[socket.socket] = ()
    ) -> None:
        """Bind every listener (or adopt passed sockets). Raises OSError naming the address."""
        loop = asyncio.get_running_loop()
        srv: asyncio.Server
        for spec in listen:
            kind, host, port = parse_listen(spec)
            try:
                if kind == "unix":
                    assert host is not None
                    _remove_stale_socket(host)
                    srv = await loop.create_unix_server(self._factory, host)
                    os.chmod(host, int(self.config.unix_socket_mode, 8))
                    self._unix_paths.append(host)
                else:
                    srv = await loop.create_server(
                        self._factory, host, port or 0, reuse_address=True
                    )
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {spec}: {e.strerror}") from e
            self._servers.append(srv)
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                srv = await loop.create_unix_server(self._factory, sock=sock)
            else:
                srv = await loop.create_server(self._factory, sock=sock)
            self._servers.append(srv)
        for srv in self._servers:
            for s in srv.sockets:
                name = s.getsockname()
                if isinstance(name, tuple):
                    host = name[0]
                    self.addresses.append(f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}")
                else:
                    self.addresses.append(f"unix:{name}")

    def _factory(self) -> _Connection:
        return _Connection(self)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let in-flight requests finish (bounded); close every connection."""
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        self.draining = True
        for srv in self._servers:
            srv.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.connections:
            log.warning("drain timeout: closing %d connection(s) with requests in flight", len(self.connections))
        for conn in list(self.connections):
            conn.abort()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    @property
    def in_flight(self) -> int:
        return sum(c.pending for c in self.connections)

    def emit(self, attrs: Mapping[str, str], profile: str, decision: Decision, elapsed: float) -> None:
        for hook in self.hooks:
            try:
                hook(attrs, profile, decision, elapsed)
            except Exception:  # a broken log handler must not break the answer
                log.exception("decision hook failed")


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode):
        os.unlink(path)
    else:
        raise OSError(17, f"{path} exists and is not a socket")


class _Connection(asyncio.Protocol):
    __slots__ = ("server", "transport", "parser", "tail", "pending", "last_active", "_idle", "_paused", "peer")

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser()
        self.tail: asyncio.Task[None] | None = None
        self.pending = 0
        self.last_active = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None
        self._paused = False
        self.peer = "?"

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        srv = self.server
        if len(srv.connections) >= srv.config.max_connections or srv.draining:
            srv.refused += 1
            log.warning(
                "refusing connection from %s: %d connections open (server.max_connections)",
                self.peer, len(srv.connections),
            )
            transport.close()  # nothing written: Postfix retries, then its default_action
            return
        srv.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self.parser.pending:
            log.info("client %s closed the connection in the middle of a request", self.peer)
        if self.tail is not None and not self.tail.done():
            self.tail.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            requests = self.parser.feed(data)
        except ProtocolError as e:
            log.warning("closing connection from %s: %s (nothing answered)", self.peer, e)
            self.abort()
            return
        for req in requests:
            self._handle(req.attrs)

    def eof_received(self) -> bool | None:
        return None  # close our side too once replies are written

    # requests ----------------------------------------------------------------------------

    def _handle(self, attrs: Mapping[str, str]) -> None:
        started = time.perf_counter()
        try:
            profile, result, _facts = self.server.service.decide_now(attrs)
        except Exception:  # a bug must defer, never permit, never kill the server
            log.exception("internal error deciding a request from %s", self.peer)
            profile_name, result = "-", _INTERNAL_ERROR
        else:
            profile_name = profile.name
        if isinstance(result, Decision) and self.tail is None:
            self._reply(attrs, profile_name, result, started)
            return
        self.pending += 1
        self.tail = asyncio.ensure_future(self._ordered(self.tail, attrs, profile_name, result, started))
        if self.pending >= MAX_PENDING_PER_CONNECTION and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    async def _ordered(
        self,
        previous: asyncio.Task[None] | None,
        attrs: Mapping[str, str],
        profile: str,
        result: Decision | Coroutine[Any, Any, Decision],
        started: float,
    ) -> None:
        try:
            if isinstance(result, Decision):
                decision = result
            else:
                try:
                    decision = await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("internal error deciding a request from %s", self.peer)
                    decision = _INTERNAL_ERROR
            if previous is not None and not previous.done():
                await asyncio.shield(previous)
            self._reply(attrs, profile, decision, started)
        finally:
            self.pending -= 1
            if self.tail is asyncio.current_task():
                self.tail = None
            if self._paused and self.pending < MAX_PENDING_PER_CONNECTION // 2 and self.transport:
                self._paused = False
                self.transport.resume_reading()
            if self.server.draining:
                self.close_if_idle()

    def _reply(self, attrs: Mapping[str, str], profile: str, decision: Decision, started: float) -> None:
        try:
            payload = encode_action(to_action(decision))
        except ValueError:
            log.error("refusing to send invalid action %r; deferring instead", to_action(decision))
            payload = encode_action(_INTERNAL_ERROR.reply)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)
        self.server.emit(attrs, profile, decision, time.perf_counter() - started)
        if self.server.draining:
            self.close_if_idle()

    # lifecycle ---------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        loop = asyncio.get_running_loop()
        remaining = self.last_active + self.server.config.idle_timeout - time.monotonic()
        if remaining <= 0 and self.pending == 0:
            log.info("closing idle connection from %s (server.idle_timeout)", self.peer)
            if self.transport is not None:
                self.transport.close()
            return
        self._idle = loop.call_later(max(remaining, 1.0), self._arm_idle)

    def close_if_idle(self) -> None:
        if (
            self.pending == 0
            and self.tail is None
            and not self.parser.pending
            and self.transport is not None
        ):
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
