"""The asyncio policy server: listeners, connections, limits, drain on stop.

A thin adapter: each client is a connection.Connection (bytes -> requests -> PolicyService ->
action lines, in request order); this module binds and adopts listeners, batches the work of
one event-loop iteration, and drains on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Protocol, TypeVar

from policyd.config import ServerConfig
from policyd.config.listen import parse_listen
from policyd.core.decision import Decision
from policyd.core.request import Request
from policyd.decision_log import flush_decision_log, hold_decision_lines, log_decision
from policyd.policy.connection import Connection, ConnectionHub
from policyd.policy.service import PolicyService

T = TypeVar("T")
log: Final = logging.getLogger("policyd.server")  # (not __name__: the name admins grep)

#: Called after every decision: (request, profile name, decision, seconds).
DecisionHook = Callable[[Request, str, Decision, float], None]

#: Python 3.13 made asyncio's create_unix_server(sock=...) unlink the socket's path when the
#: server closes (cleanup_socket=True by default). A passed-in socket belongs to systemd's
#: policyd.socket: unlinking it would leave Postfix with ENOENT after `systemctl restart`.
#: uvloop 0.21 (the first for 3.13) follows it with the same parameter; before 3.13 neither
#: has the parameter nor unlinks.
_KEEP_PASSED_UNIX_SOCKET: Final[dict[str, Any]] = (
    {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
)


class _Listening(Protocol):
    """asyncio.Server as read here. uvloop's `sockets` is a list where typeshed says tuple, and
    compiled code (mypyc) checks a tuple type at run time; a Sequence it does not check."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...


class PolicyServer:
    def __init__(
        self,
        service: PolicyService,
        hooks: Iterable[DecisionHook] = (),
    ) -> None:
        self.service = service
        # after the decision log line (called directly: it runs for every request)
        self.hooks: list[DecisionHook] = list(hooks)
        # What the connections share with the server. Requests are handled in batches, one
        # per event-loop iteration (see Connection.data_received): hub.inbox holds the data
        # read in this iteration, _process_inbox handles it.
        self.hub = ConnectionHub(service, self._process_inbox, self.emit)
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self.addresses: list[str] = []
        # While stop() drains: its deadline, and the lingering closes it started.
        self._drain_deadline: float | None = None
        self._lingering: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> ServerConfig:
        """The running [server] settings: the runtime's, so a reload applies them at once."""
        return self.hub.config

    @property
    def connections(self) -> set[Connection]:
        return self.hub.connections

    @property
    def refused(self) -> int:
        """Connections refused (server.max_connections, or while draining)."""
        return self.hub.refused

    # listeners ---------------------------------------------------------------------------

    async def start(
        self, listen: Iterable[str] = (), sockets: Iterable[socket.socket] = ()
    ) -> None:
        """Bind every listener (or adopt passed sockets). Raises OSError naming the address.

        Passed sockets (systemd socket activation) must be listening SOCK_STREAM sockets; they
        are served as they are (no chmod, and never unlinked on stop: systemd owns them).
        """
        loop = self.hub.loop = asyncio.get_running_loop()
        srv: asyncio.Server
        # asyncio's default backlog (100) overflows when many smtpd processes (re)connect at
        # once (after a restart, every one of them): the kernel then drops SYNs and each drop
        # costs the client a 1 s retransmit. For passed sockets this also avoids listen(100)
        # shrinking systemd's Backlog=.
        backlog = max(1024, self.config.max_connections)
        for spec in listen:
            kind, host, port = parse_listen(spec)
            try:
                if kind == "unix":
                    assert host is not None
                    remove_stale_socket(host)
                    srv = await loop.create_unix_server(self.new_connection, host, backlog=backlog)
                    os.chmod(host, int(self.config.unix_socket_mode, 8))
                    self._unix_paths.append(host)
                else:
                    srv = await loop.create_server(
                        self.new_connection, host, port or 0, reuse_address=True, backlog=backlog
                    )
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {spec}: {e.strerror}") from e
            self._servers.append(srv)
        for sock in sockets:
            if sock.type != socket.SOCK_STREAM:
                raise OSError(
                    errno.EINVAL, f"passed socket fd {sock.fileno()} is not a stream socket"
                )
            if sock.family == socket.AF_UNIX:
                srv = await loop.create_unix_server(
                    self.new_connection, sock=sock, backlog=backlog, **_KEEP_PASSED_UNIX_SOCKET
                )
            else:
                srv = await loop.create_server(self.new_connection, sock=sock, backlog=backlog)
            self._servers.append(srv)
        for srv in self._servers:
            listening: _Listening = srv  # for the compiler: see _Listening
            for s in listening.sockets:
                name = s.getsockname()
                if isinstance(name, tuple):
                    bound: str = name[0]
                    self.addresses.append(
                        f"[{bound}]:{name[1]}" if ":" in bound else f"{bound}:{name[1]}"
                    )
                else:
                    if isinstance(name, bytes):  # abstract unix name
                        name = "@" + name[1:].decode(errors="replace")
                    self.addresses.append(f"unix:{name}")

    def new_connection(self) -> Connection:
        """A Connection of this server (the protocol factory of its listeners and of --stdio)."""
        return Connection(self.hub)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let in-flight requests finish (bounded); close every connection.

        A connection is closed only between requests, and never with a reset: idle
        connections get a FIN (shutdown) while we keep reading, so a request the client sent
        at the same moment meets a clean end of stream instead of an RST, and Postfix simply
        retries it elsewhere (or, with socket activation, on the restarted policyd). Requests
        already read are answered first; those still unanswered at the drain deadline are
        cut off.
        """
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for srv in self._servers:
            srv.close()
        lingering = self._lingering
        # From now on each batch also closes the connections it has just answered (see
        # _process_inbox): a busy client is caught between two requests there, right after
        # its reply, where this sweep would catch it only by luck.
        self._drain_deadline = deadline
        while self.connections:
            for conn in list(self.connections):
                self._close_between_requests(conn, deadline)
            if not self.connections or loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        self.hub.draining = True
        if self.connections:
            log.warning(
                "drain timeout: closing %d connection(s) with requests in flight",
                len(self.connections),
            )
        for conn in list(self.connections):
            conn.abort()
        # abort() reports connection_lost on a later loop iteration, and uvloop's
        # wait_closed() below does not wait for it: give those callbacks their turn (bounded)
        for _ in range(50):
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        if lingering:
            await asyncio.wait(lingering, timeout=max(0.1, deadline - loop.time()) + 1.0)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await _at_most(srv.wait_closed(), 1.0)
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _close_between_requests(self, conn: Connection, deadline: float) -> None:
        """Close `conn` if it is between requests (with a lingering FIN, its task kept in
        _lingering); else leave it."""
        tr = conn.transport
        if tr is None or tr.is_closing():
            return
        conn.stop_reading_between_requests()
        if tr.get_write_buffer_size():  # (its reply is still being written: a later sweep)
            return
        dup = -1
        with contextlib.suppress(OSError, AttributeError, ValueError, TypeError):
            dup = os.dup(tr.get_extra_info("socket").fileno())
        conn.close_if_idle()
        if not tr.is_closing():  # a request is in flight or half received
            if dup >= 0:
                os.close(dup)
            return
        if dup >= 0:
            self._lingering.add(asyncio.ensure_future(_linger(socket.socket(fileno=dup), deadline)))

    @property
    def open_connections(self) -> int:
        """Connections being served (safe to read from another thread, e.g. a metrics scrape)."""
        return len(self.connections)

    @property
    def pending_requests(self) -> int:
        """Requests read but not yet answered (thread-safe variant of in_flight)."""
        return sum(c.pending for c in tuple(self.connections))

    @property
    def in_flight(self) -> int:
        return sum(c.pending for c in self.connections)

    def _process_inbox(self) -> None:
        """Handle the data every connection received in this loop iteration, send the replies
        decided from it, then log those decisions.

        Under load one iteration reads from many connections. Handling each chunk as it is
        read interleaves our Python with the kernel's socket work, and each evicts the other
        from the CPU caches; handling them back to back and writing the replies afterwards
        measured clearly faster (bench/RESULTS.md). The log lines and decision hooks come
        after the replies (the clients need not wait for them), their lines written together.
        Nothing waits longer than this iteration: the callback was scheduled by the first
        data_received of the iteration.
        """
        hub = self.hub
        while hub.inbox:  # (a connection_lost below may process the rest itself)
            inbox = hub.inbox
            hub.inbox = []
            outbox: list[tuple[asyncio.Transport, bytes]] = []
            decided: list[tuple[Request, str, Decision, float]] = []
            hub.outbox = outbox
            hub.decided = decided
            try:
                for conn, data in inbox:
                    conn.queued -= 1
                    try:
                        conn.handle_data(data)
                    except Exception:  # a bug: that client is cut off, the others answered
                        log.exception("internal error reading from %s; closing it", conn.peer)
                        conn.abort()
            finally:
                hub.outbox = hub.decided = None
                for transport, payload in outbox:
                    if not transport.is_closing():
                        transport.write(payload)
                hold_decision_lines()  # (their lines are written together, at the flush)
                try:
                    for req, profile, decision, elapsed in decided:
                        self.emit(req, profile, decision, elapsed)
                finally:
                    flush_decision_log()
                if self._drain_deadline is not None:
                    for conn, _ in inbox:
                        if conn.pending == 0:
                            self._close_between_requests(conn, self._drain_deadline)

    def emit(self, req: Request, profile: str, decision: Decision, elapsed: float) -> None:
        try:
            log_decision(req, profile, decision, elapsed)
        except Exception:  # a broken log handler must not break the answer
            log.exception("decision log failed")
        for hook in self.hooks:
            try:
                hook(req, profile, decision, elapsed)
            except Exception:  # a broken log handler must not break the answer
                log.exception("decision hook failed")


async def _linger(sock: socket.socket, deadline: float) -> None:
    """Send FIN on a connection asyncio has let go of, discard what the client still sends,
    and close once it has closed too (or after 2 s / the drain deadline). Closing a socket
    with unread data would send an RST, which the client sees as "connection reset"."""
    loop = asyncio.get_running_loop()
    until = min(deadline, loop.time() + 2.0)
    try:
        sock.setblocking(False)
        sock.shutdown(socket.SHUT_WR)
        while loop.time() < until:
            data = await _at_most(loop.sock_recv(sock, 65536), until - loop.time())
            if not data:  # (None: no more within the time)
                break
    except OSError:
        pass
    finally:
        sock.close()


def bind_listener(spec: str, mode: str, unix_paths: list[str]) -> list[socket.socket]:
    """Listening sockets for one listen spec (each address a name resolves to) bound as
    start() binds them, for processes that inherit them (policy/workers.py). A unix path is
    added to `unix_paths` (to unlink at stop). Raises OSError naming the spec."""
    kind, host, port = parse_listen(spec)
    backlog = 1024  # (each worker's start() listens again, with its own backlog)
    out: list[socket.socket] = []
    try:
        if kind == "unix":
            assert host is not None
            remove_stale_socket(host)
            out.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            out[0].bind(host)
            os.chmod(host, int(mode, 8))
            unix_paths.append(host)
            out[0].listen(backlog)
            return out
        for family, _, _, _, addr in socket.getaddrinfo(
            host, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, socket.SOCK_STREAM)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
        return out
    except OSError as e:
        for sock in out:
            sock.close()
        raise OSError(e.errno, f"cannot listen on {spec}: {e.strerror}") from e


def remove_stale_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode):
        os.unlink(path)
    else:
        raise OSError(17, f"{path} exists and is not a socket")


async def _at_most(aw: Awaitable[T], seconds: float) -> T | None:
    """`aw`'s result, or None when it takes longer than `seconds` (it is cancelled then).
    asyncio.wait, not wait_for: see policyd/build.py (Debian's mypyc 1.15 would let the
    timeout out as a CancelledError)."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait((task,), timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
    return task.result() if task.done() else None
