"""One client connection of the policy server: bytes in through protocol.RequestParser,
requests to the service, replies out in request order (even when a later request is decided
from cache before an earlier one's directory lookup returns), idle timeout, flow control."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from policyd.core.decision import Decision
from policyd.core.later import Later
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


#: Called with each decision once its reply is written: (request, profile name, decision,
#: seconds).
Emit = Callable[[Request, str, Decision, float], None]


class ConnectionHub:
    """What a server and its connections share, given to each Connection: the service that
    decides, the open connections, the state of the drain, and the batch of one event-loop
    iteration (the server, policy/server.py, owns it; this module does not know the server).

    `process_inbox` handles the batch (inbox -> replies in outbox -> decisions logged by
    `emit`); outbox and decided are lists only while it runs."""

    def __init__(
        self, service: PolicyService, process_inbox: Callable[[], None], emit: Emit
    ) -> None:
        self.service = service
        self.process_inbox = process_inbox
        self.emit = emit
        #: the event loop it serves on (set when the server starts)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[Connection] = set()
        self.draining = False
        #: connections refused (server.max_connections, or while draining)
        self.refused = 0
        #: the data read in this loop iteration, not yet handled
        self.inbox: list[tuple[Connection, bytes]] = []
        self.outbox: list[tuple[asyncio.Transport, bytes]] | None = None
        self.decided: list[tuple[Request, str, Decision, float]] | None = None

    @property
    def config(self) -> ServerConfig:
        """The running [server] settings: the runtime's, so a reload applies them at once."""
        return self.service.runtime.config.server


#: Stop reading from a client that has this many requests waiting for a directory answer
#: (a pipelining client cannot make us queue without bound).
MAX_PENDING_PER_CONNECTION: Final = 64


class Connection(asyncio.Protocol):
    __slots__ = (
        "hub",
        "transport",
        "parser",
        "tail",
        "pending",
        "waits",
        "queued",
        "last_active",
        "_idle",
        "_paused",
        "_wpaused",
        "_peername",
    )

    def __init__(self, hub: ConnectionHub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser()
        #: the last waiting request's Task, or its decision's future (the callback path)
        self.tail: asyncio.Future[Any] | None = None
        self.pending = 0
        #: requests that waited so far (the tail's number: see _ordered)
        self.waits = 0
        self.queued = 0  # chunks in hub.inbox, not yet parsed
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
        hub = self.hub
        if len(hub.connections) >= hub.config.max_connections or hub.draining:
            hub.refused += 1
            log.warning(
                "refusing connection from %s: %d connections open (server.max_connections)",
                self.peer,
                len(hub.connections),
            )
            transport.close()  # nothing written: Postfix retries, then its default_action
            return
        hub.connections.add(self)
        # (No TCP_NODELAY here: asyncio and uvloop both set it on every TCP transport, and
        # tests/integration/test_server.py checks that our connections have it.)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.queued:  # what it sent before closing is handled (and logged) as usual
            self.hub.process_inbox()
        self.hub.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self.parser.pending:
            log.info("client %s closed the connection in the middle of a request", self.peer)
        if self.tail is not None and not self.tail.done():
            self.tail.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = _monotonic()
        hub = self.hub
        batch = hub.inbox
        batch.append((self, data))
        self.queued += 1
        if len(batch) > 1:
            return
        if len(hub.connections) == 1:
            # The one connection: no other client's data can join this batch, so it is handled
            # now, without the wait for the end of the loop iteration.
            hub.process_inbox()
        else:
            # (the server's loop: asyncio.get_running_loop() makes a getpid system call)
            (hub.loop or asyncio.get_running_loop()).call_soon(hub.process_inbox)

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
            profile, result = self.hub.service.decide_now(req)
        except Exception:  # a bug must defer, never permit, never kill the server
            log.exception("internal error deciding a request from %s", self.peer)
            profile_name, result = "-", INTERNAL_ERROR
        else:
            profile_name = profile.name
        if isinstance(result, Decision) and self.tail is None:
            self._reply(req, profile_name, result, started)
            return
        self.pending += 1
        # (the hub's loop: asyncio.ensure_future and asyncio.current_task each make a getpid
        # system call, twice per waiting request; the tail is told apart by a number instead)
        self.waits += 1
        if self.tail is None and isinstance(result, Later):
            # the quota store's answer: replied from its future's done-callback, no Task and
            # no coroutine; a later request of this connection waits for it (the tail)
            self.tail = result.fut
            result.fut.add_done_callback(
                partial(self._settled, self.waits, req, profile_name, started, result.then)
            )
        else:
            coro = self._ordered(self.tail, self.waits, req, profile_name, result, started)
            self.tail = (self.hub.loop or asyncio.get_running_loop()).create_task(coro)
        if self.pending >= MAX_PENDING_PER_CONNECTION and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def _settled(
        self,
        wait: int,
        req: Request,
        profile: str,
        started: float,
        then: Callable[[asyncio.Future[Any]], Decision],
        fut: asyncio.Future[Any],
    ) -> None:
        """A waiting request's decision, from its future's done-callback."""
        try:
            try:
                decision = then(fut)
            except (Exception, asyncio.CancelledError):  # a bug (or a call given up) must
                # defer, never permit, never kill the server
                log.exception("internal error deciding a request from %s", self.peer)
                decision = INTERNAL_ERROR
            self._reply(req, profile, decision, started)
        finally:
            self._waited(wait)

    async def _ordered(
        self,
        previous: asyncio.Future[Any] | None,
        wait: int,
        req: Request,
        profile: str,
        result: Decision | Awaitable[Decision],
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
                try:
                    await asyncio.shield(previous)
                except asyncio.CancelledError:
                    if not previous.cancelled():  # (this one is cancelled, not the earlier)
                        raise
                except Exception:  # noqa: BLE001, S110 - the earlier request's call failed:
                    pass  # (its own reply says so and is logged; this one's follows it)
            self._reply(req, profile, decision, started)
        finally:
            self._waited(wait)

    def _waited(self, wait: int) -> None:
        """Request number `wait` is answered (or given up)."""
        self.pending -= 1
        if self.waits == wait:  # (the last one: no later request waits on this one)
            self.tail = None
        if self._paused and self.pending < MAX_PENDING_PER_CONNECTION // 2 and self.transport:
            self._paused = False
            if not self._wpaused:
                self.transport.resume_reading()
        if self.hub.draining:
            self.close_if_idle()

    def _reply(self, req: Request, profile: str, decision: Decision, started: float) -> None:
        payload = encode_decision(decision)
        transport = self.transport
        hub = self.hub
        elapsed = _perf_counter() - started
        outbox = hub.outbox
        decided = hub.decided
        if outbox is not None and decided is not None and not hub.draining:
            # In the server's batch: the reply written, then logged, with the others
            if transport is not None:
                outbox.append((transport, payload))  # (written then, unless closing by then)
            decided.append((req, profile, decision, elapsed))
            return
        if transport is not None and not transport.is_closing():
            transport.write(payload)
        hub.emit(req, profile, decision, elapsed)
        if hub.draining:
            self.close_if_idle()

    # lifecycle ---------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        loop = self.hub.loop or asyncio.get_running_loop()
        remaining = self.last_active + self.hub.config.idle_timeout - time.monotonic()
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
