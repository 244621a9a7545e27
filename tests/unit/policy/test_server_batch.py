"""The server's batch (server.PolicyServer._process_inbox with connection.Connection): what is
handled at once and what waits for the end of the loop iteration, with transports that only
record what is written, on an event loop that runs only when the test runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.core.request import Request
from policyd.policy.connection import Connection
from policyd.policy.protocol import encode_request
from policyd.policy.server import PolicyServer
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from tests.integration.serverutil import authed, make_config


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Run what was scheduled with call_soon (one loop iteration)."""
    loop.run_until_complete(asyncio.sleep(0))


def server(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> tuple[PolicyServer, list[bytes]]:
    """A server on `loop`; its decision hook records, for each decision, what the transports
    had been given by then."""
    srv = PolicyServer(PolicyService(build_runtime(make_config(tmp_path))))
    srv.hub.loop = loop
    seen: list[bytes] = []

    def hook(req: Request, profile: str, decision: object, elapsed: float) -> None:
        seen.append(b"".join(w for c in srv.connections for w in written(c)))

    srv.hooks.append(hook)
    return srv, seen


def connect(srv: PolicyServer) -> Connection:
    conn = Connection(srv.hub)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    return conn


def written(conn: Connection) -> list[bytes]:
    assert isinstance(conn.transport, Transport)
    return conn.transport.written


OWNED = encode_request(authed("alice", "alice@example.org"))


def test_the_one_connection_is_answered_at_once(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    srv, seen = server(tmp_path, loop)
    conn = connect(srv)
    conn.data_received(OWNED)  # (the loop does not run)
    assert written(conn) == [b"action=OK\n\n"]
    assert seen == [b"action=OK\n\n"]  # and logged after its reply was written
    assert not srv.hub.inbox


def test_with_several_connections_the_replies_wait_for_the_end_of_the_iteration(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    srv, seen = server(tmp_path, loop)
    a, b = connect(srv), connect(srv)
    a.data_received(OWNED)
    b.data_received(OWNED)
    assert written(a) == written(b) == []  # batched: handled together, at the iteration's end
    run_soon(loop)
    assert written(a) == written(b) == [b"action=OK\n\n"]
    assert seen == [b"action=OK\n\n" * 2] * 2  # both replies written before either is logged


def test_a_request_in_pieces_on_the_one_connection_is_answered_when_whole(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    srv, _ = server(tmp_path, loop)
    conn = connect(srv)
    conn.data_received(OWNED[:50])
    assert written(conn) == [] and conn.parser.pending
    conn.data_received(OWNED[50:] + OWNED)
    assert written(conn) == [b"action=OK\n\n"] * 2
