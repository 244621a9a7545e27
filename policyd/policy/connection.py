"""One client connection of the policy server: bytes in through protocol.RequestParser,
requests to the service, replies out in request order (even when a later request is decided
from cache before an earlier one's directory lookup returns), idle timeout, flow control."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

from policyd.core.decision import Decision
from policyd.core.request import Request
from policyd.policy.actions import INTERNAL_ERROR, encode_decision
from policyd.policy.protocol import ProtocolError, RequestParser

if TYPE_CHECKING:
    from policyd.config import ServerConfig
    from policyd.policy.service import PolicyService

log: Final = logging.getLogger("policyd.server")
# (bound once: compiled, `time.perf_counter()` looks the name up in the module at every call)
_perf_counter: Final = time.perf_counter
_monotonic: Final = time.monotonic


class PolicyServer(Protocol):
    """What a connection uses of its server (policyd.policy.server.PolicyServer; typed here so the
    two modules do not import each other)."""

    service: PolicyService
    #: the event loop it serves on (set by start())
    loop: asyncio.AbstractEventLoop | None
    connections: set[Connection]
    draining: bool
    refused: int
    _inbox: list[tuple[Connection, bytes]]
    _outbox: list[tuple[asyncio.Transport, bytes]] | None
    _decided: list[tuple[Request, str, Decision, float]] | None

    @property
    def config(self) -> ServerConfig: ...

    def _process_inbox(self) -> None: ...

    def emit(self, req: Request, profile: str, decision: Decision, elapsed: float) -> None: ...


#: Stop reading from a client that has this many requests waiting for a directory answer
#: (a pipelining client cannot make us queue without bound).
MAX_PENDING_PER_CONNECTION: Final = 64


class Connection(asyncio.Protocol):
    __slots__ = (
        "server",
        "transport",
        "parser",
        "tail",
        "pending",
        "queued",
        "last_active",
        "_idle",
        "_paused",
        "_wpaused",
        "_peername",
    )

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser()
        self.tail: asyncio.Task[None] | None = None
        self.pending = 0
        self.queued = 0  # chunks in server._inbox, not yet parsed
        self.last_active = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None
        self._paused = False
        self._wpaused = False  # paused by flow control: the client is not reading its replies
        self._peername: object = None

    @property
    def peer(self) -> str:
        """The client as log lines name it: "host:port", or "unix" (formatted when a line
        needs it, not for every connection)."""
        name = self._peername
        if isinstance(name, tuple):
            return f"{name[0]}:{name[1]}"
        return "unix" if self.transport is not None else "?"

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._peername = transport.get_extra_info("peername")
        srv = self.server
        if len(srv.connections) >= srv.config.max_connections or srv.draining:
            srv.refused += 1
            log.warning(
                "refusing connection from %s: %d connections open (server.max_connections)",
                self.peer,
                len(srv.connections),
            )
            transport.close()  # nothing written: Postfix retries, then its default_action
            return
        srv.connections.add(self)
        # (No TCP_NODELAY here: asyncio and uvloop both set it on every TCP transport, and
        # tests/integration/test_server.py checks that our connections have it.)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.queued:  # what it sent before closing is handled (and logged) as usual
            self.server._process_inbox()
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self.parser.pending:
            log.info("client %s closed the connection in the middle of a request", self.peer)
        if self.tail is not None and not self.tail.done():
            self.tail.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = _monotonic()
        srv = self.server
        batch = srv._inbox
        batch.append((self, data))
        self.queued += 1
        if len(batch) > 1:
            return
        if len(srv.connections) == 1:
            # The one connection: no other client's data can join this batch, so it is handled
            # now, without the wait for the end of the loop iteration.
            srv._process_inbox()
        else:
            # (the server's loop: asyncio.get_running_loop() makes a getpid system call)
            (srv.loop or asyncio.get_running_loop()).call_soon(srv._process_inbox)

    def handle_data(self, data: bytes) -> None:
        try:
            requests = self.parser.feed_requests(data)
        except ProtocolError as e:
            log.warning("closing connection from %s: %s (nothing answered)", self.peer, e)
            self.abort()
            return
        for req in requests:
            self._handle(req)

    def eof_received(self) -> bool | None:
        return None  # close our side too once replies are written

    def pause_writing(self) -> None:
        # Our write buffer is over its high-water mark: the client sends requests but does not
        # read the replies. Stop reading it, or its replies pile up here without bound.
        self._wpaused = True
        if self.transport is not None and not self._paused:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._wpaused = False
        if self.transport is not None and not self._paused and not self.transport.is_closing():
            self.transport.resume_reading()

    # requests ----------------------------------------------------------------------------

    def _handle(self, req: Request) -> None:
        started = _perf_counter()
        try:
            profile, result = self.server.service.decide_now(req)
        except Exception:  # a bug must defer, never permit, never kill the server
            log.exception("internal error deciding a request from %s", self.peer)
            profile_name, result = "-", INTERNAL_ERROR
        else:
            profile_name = profile.name
        if isinstance(result, Decision) and self.tail is None:
            self._reply(req, profile_name, result, started)
            return
        self.pending += 1
        self.tail = asyncio.ensure_future(
            self._ordered(self.tail, req, profile_name, result, started)
        )
        if self.pending >= MAX_PENDING_PER_CONNECTION and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    async def _ordered(
        self,
        previous: asyncio.Task[None] | None,
        req: Request,
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
                    decision = INTERNAL_ERROR
            if previous is not None and not previous.done():
                await asyncio.shield(previous)
            self._reply(req, profile, decision, started)
        finally:
            self.pending -= 1
            if self.tail is asyncio.current_task():
                self.tail = None
            if self._paused and self.pending < MAX_PENDING_PER_CONNECTION // 2 and self.transport:
                self._paused = False
                if not self._wpaused:
                    self.transport.resume_reading()
            if self.server.draining:
                self.close_if_idle()

    def _reply(self, req: Request, profile: str, decision: Decision, started: float) -> None:
        payload = encode_decision(decision)
        transport = self.transport
        srv = self.server
        elapsed = _perf_counter() - started
        outbox = srv._outbox
        decided = srv._decided
        if outbox is not None and decided is not None and not srv.draining:
            # In the server's batch: the reply written, then logged, with the others
            if transport is not None:
                outbox.append((transport, payload))  # (written then, unless closing by then)
            decided.append((req, profile, decision, elapsed))
            return
        if transport is not None and not transport.is_closing():
            transport.write(payload)
        srv.emit(req, profile, decision, elapsed)
        if srv.draining:
            self.close_if_idle()

    # lifecycle ---------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        loop = self.server.loop or asyncio.get_running_loop()
        remaining = self.last_active + self.server.config.idle_timeout - time.monotonic()
        if remaining <= 0 and self.pending == 0:
            log.info("closing idle connection from %s (server.idle_timeout)", self.peer)
            if self.transport is not None:
                self.transport.close()
            return
        self._idle = loop.call_later(max(remaining, 1.0), self._arm_idle)

    def stop_reading_between_requests(self) -> None:
        """While the server drains: read no further request once those read are answered, so
        that the connection becomes idle (and is closed) once its reply is written. A request
        the client sent meanwhile stays unread: the lingering close discards it, and the
        client meets a clean end of stream."""
        if (
            self.transport is not None
            and not self._paused
            and self.pending == 0
            and self.queued == 0
            and self.tail is None
            and not self.parser.pending
        ):
            self._paused = True
            self.transport.pause_reading()

    def close_if_idle(self) -> None:
        if (
            self.pending == 0
            and self.queued == 0
            and self.tail is None
            and not self.parser.pending
            and self.transport is not None
        ):
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
