"""The in-process policy server on real sockets: framing, pipelining, listeners, concurrency.

Each test starts a real PolicyServer (config -> build_runtime -> PolicyService -> PolicyServer)
with the embedded file directory written to tmp_path, and talks to it over TCP (127.0.0.1,
::1) or a unix socket. Most tests run on both the stdlib event loop and uvloop (what
`policyd serve` uses when it is installed).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from policyd.core.request import Request
from policyd.policy.connection import MAX_PENDING_PER_CONNECTION
from policyd.policy.protocol import encode_request
from tests.compiled import replaces_methods
from tests.integration.serverutil import (
    AUTH_REQUIRED,
    IN_RANGE,
    NOT_OWNED,
    OUTSIDE,
    REQUIRES_LOGIN,
    RESTRICTED,
    BlockingDirectory,
    Client,
    authed,
    has_ipv6,
    loop_kinds,
    make_config,
    request,
    round_trip,
    run,
    serving,
    wait_until,
)

LOOPS = pytest.mark.parametrize("loop", loop_kinds())

# (request, expected action): every row of the decision table the embedded directory can reach.
CASES: list[tuple[dict[str, str], str]] = [
    (authed("alice", "alice@example.org"), "OK"),
    (authed("alice", "Alice+news@Example.ORG"), "OK"),
    (authed("bob", "alice@example.org"), NOT_OWNED.format(sender="alice@example.org", login="bob")),
    (
        authed("mallory", "bob@example.org"),
        NOT_OWNED.format(sender="bob@example.org", login="mallory"),
    ),
    (authed("carol", "anyone@carol.example"), "OK"),
    (authed("alice", ""), "DUNNO"),  # null sender
    (
        authed("alice", "bob@example.org", client_address=IN_RANGE),
        NOT_OWNED.format(sender="bob@example.org", login="alice"),
    ),
    (request(client_address=IN_RANGE, sender="anyone@example.net"), "OK"),
    (request(client_address=RESTRICTED, sender="x@example.com"), "OK"),
    (
        request(client_address=RESTRICTED, sender="x@example.org"),
        "553 5.7.1 Sender address <x@example.org> is not allowed from network restricted",
    ),
    (request(client_address=OUTSIDE, sender="x@example.net"), AUTH_REQUIRED.format(client=OUTSIDE)),
    (request(client_address=OUTSIDE, sender="x@example.net", server_port="25"), "DUNNO"),
    (
        request(client_address=OUTSIDE, sender="bob@example.org", server_port="25"),
        REQUIRES_LOGIN.format(sender="bob@example.org"),
    ),
    (request(client_address=OUTSIDE, sender="x@example.net", policy_context="mx"), "DUNNO"),
    (request(protocol_state="MAIL", client_address=OUTSIDE), "DUNNO"),
    (request(request="something_else"), "DUNNO"),
]


# --------------------------------------------------------------------------------------------
# Basics


@LOOPS
def test_many_requests_on_one_connection(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            for i in range(200):
                attrs, expected = CASES[i % len(CASES)]
                assert await c.ask(attrs) == expected, (i, attrs)
            assert len(h.server.connections) == 1
            await c.aclose()
            assert await wait_until(lambda: not h.server.connections)
            assert len(h.decisions) == 200

    run(main(), loop)


@LOOPS
def test_a_tcp_connection_is_served_with_nagle_off(tmp_path: Path, loop: str) -> None:
    # Each reply is one small write that the client waits for: with Nagle's algorithm on, a
    # reply could wait for the ACK of the previous one (delayed ACK, up to 40 ms on Linux).
    # policyd relies on the event loop to set TCP_NODELAY (asyncio and uvloop both do).
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            assert await c.ask(authed("alice", "alice@example.org")) == "OK"
            (conn,) = h.server.connections
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_a_reply_is_on_its_way_before_its_decision_is_logged(tmp_path: Path, loop: str) -> None:
    # The log line and the decision hooks come after the replies of the batch: the client
    # does not wait for them. When the hook runs, the reply has been handed to the transport:
    # on loopback it is in the client's socket at once, unless the event loop holds writes
    # until the end of its iteration (uvloop does on Python 3.13): then it is in the
    # transport's buffer.
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            host, _, port = h.address().rpartition(":")
            sock = socket.create_connection((host, int(port)))
            sock.setblocking(False)
            seen: list[bytes] = []

            def hook(req: Request, profile: str, decision: object, elapsed: float) -> None:
                (conn,) = h.server.connections
                assert conn.transport is not None
                try:
                    seen.append(sock.recv(4096, socket.MSG_PEEK))
                except BlockingIOError:
                    buffered = conn.transport.get_write_buffer_size()
                    seen.append(b"action=OK\n\n" if buffered == 11 else b"(nothing yet)")

            h.server.hooks.append(hook)
            try:
                sock.send(encode_request(authed("alice", "alice@example.org")))
                assert await wait_until(lambda: bool(seen))
                assert seen == [b"action=OK\n\n"]
            finally:
                sock.close()

    run(main(), loop)


@LOOPS
def test_concurrent_clients(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path)
    clients, per_client = 60, 8

    async def one(address: str, n: int) -> list[tuple[str, str]]:
        c = await Client.connect(address)
        out = []
        for i in range(per_client):
            attrs, expected = CASES[(n * 7 + i) % len(CASES)]
            out.append((await c.ask(attrs), expected))
            await asyncio.sleep(0)
        await c.aclose()
        return out

    async def main() -> None:
        async with serving(config) as h:
            results = await asyncio.wait_for(
                asyncio.gather(*(one(h.address(), n) for n in range(clients))), 30
            )
            pairs = [p for r in results for p in r]
            assert len(pairs) == clients * per_client
            assert all(got == want for got, want in pairs)
            assert await wait_until(lambda: not h.server.connections)

    run(main(), loop)


@LOOPS
def test_unix_socket_with_configured_mode(tmp_path: Path, loop: str) -> None:
    path = tmp_path / "policyd.sock"
    # a stale socket file from a crashed run is replaced
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    config = make_config(
        tmp_path, {"server": {"listen": [f"unix:{path}"], "unix_socket_mode": "0640"}}
    )

    async def main() -> None:
        async with serving(config) as h:
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o640
            assert h.address("unix") == f"unix:{path}"
            for attrs, expected in CASES[:6]:
                action, _ = await round_trip(h.address("unix"), attrs)
                assert action == expected
        assert not path.exists(), "stop() removes the socket file"

    run(main(), loop)


@LOOPS
def test_a_passed_unix_socket_is_served_and_left_in_place_on_stop(
    tmp_path: Path, loop: str
) -> None:
    """A socket-activated unix listener belongs to systemd's policyd.socket: stop() must not
    unlink its path, or Postfix gets ENOENT after `systemctl restart`. (Python 3.13's asyncio
    unlinks it by default: cleanup_socket=True.)"""
    path = tmp_path / "policy.sock"
    passed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    passed.bind(str(path))
    passed.listen(16)
    passed.setblocking(False)
    inode = os.stat(path).st_ino
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config, sockets=[passed]) as h:
            assert h.address("unix") == f"unix:{path}"
            action, _ = await round_trip(f"unix:{path}", CASES[0][0])
            assert action == CASES[0][1]
        assert path.exists(), "stop() unlinked the passed-in socket"
        assert stat.S_ISSOCK(os.stat(path).st_mode) and os.stat(path).st_ino == inode

    try:
        run(main(), loop)
    finally:
        passed.close()


def test_unix_socket_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    config = make_config(tmp_path, {"server": {"listen": [f"unix:{path}"]}})

    async def main() -> None:
        with pytest.raises(OSError, match="not a socket"):
            async with serving(config):
                pass

    run(main())
    assert path.read_text() == "keep me"


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
@LOOPS
def test_ipv6_listener(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path, {"server": {"listen": ["[::1]:0", "127.0.0.1:0"]}})

    async def main() -> None:
        async with serving(config) as h:
            addr6 = h.address("tcp6")
            assert addr6.startswith("[::1]:")
            c = await Client.connect(addr6)
            assert c.writer.get_extra_info("peername")[0] == "::1"
            assert await c.ask(request(client_address="2001:db8::25", sender="a@b.example")) == "OK"
            assert await c.ask(request(client_address="2001:db9::25", sender="a@b.example")) == (
                AUTH_REQUIRED.format(client="2001:db9::25")
            )
            assert (
                await c.ask(authed("bob", "bob@example.org", client_address="2001:db9::1")) == "OK"
            )
            await c.aclose()
            # both listeners serve
            action, _ = await round_trip(h.address("tcp4"), CASES[0][0])
            assert action == CASES[0][1]

    run(main(), loop)


@LOOPS
def test_nothing_written_before_a_request_or_after_a_reply(tmp_path: Path, loop: str) -> None:
    """Postfix checks that the socket is not readable before each request (attr_clnt.c): a
    banner or a stray byte would make it drop the connection."""
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            assert await c.nothing_for(0.2) == b""
            assert not c.reader.at_eof()
            assert await c.ask(CASES[0][0]) == CASES[0][1]
            assert await c.nothing_for(0.2) == b""  # no leftover after the reply
            assert not c.reader.at_eof()
            assert await c.ask(CASES[2][0]) == CASES[2][1]
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_crlf_line_ends_are_answered(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            for attrs, expected in CASES[:8]:
                data = "".join(f"{k}={v}\r\n" for k, v in attrs.items()) + "\r\n"
                c.send(data.encode())
                assert await c.reply() == expected
            # mixed: LF lines, CRLF terminator; and a few blank lines before a request
            c.send(
                b"\n\r\n\n"
                + b"".join(f"{k}={v}\n".encode() for k, v in CASES[0][0].items())
                + b"\r\n"
            )
            assert await c.reply() == CASES[0][1]
            await c.aclose()

    run(main(), loop)


# --------------------------------------------------------------------------------------------
# Pipelining


@LOOPS
def test_pipelined_requests_answered_in_order(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            batch = [CASES[(i * 5) % len(CASES)] for i in range(300)]
            c.send(b"".join(_encode(a) for a, _ in batch))  # one write: 300 requests
            for i, (_, expected) in enumerate(batch):
                assert await c.reply() == expected, i
            assert await c.nothing_for(0.05) == b""
            await c.aclose()

    run(main(), loop)


def _encode(attrs: dict[str, str]) -> bytes:
    return encode_request(attrs)


@LOOPS
def test_pipelined_order_kept_when_an_earlier_lookup_is_slow(tmp_path: Path, loop: str) -> None:
    """A later request decided at once (no lookup, or a fast lookup) waits for the earlier
    one's slow lookup: replies leave in request order."""
    config = make_config(tmp_path, {"cache": {"enabled": False}})
    slow = 0.4
    directory = BlockingDirectory(delays={"alice": slow})

    async def main() -> None:
        async with serving(config, directory) as h:
            c = await Client.connect(h.address())
            batch = [
                (
                    authed("alice", "bob@example.org"),
                    NOT_OWNED.format(sender="bob@example.org", login="alice"),
                ),
                (request(client_address=IN_RANGE, sender="x@example.net"), "OK"),  # no lookup
                (authed("bob", "bob@example.org"), "OK"),  # fast lookup
                (
                    authed("mallory", "m@example.org"),
                    NOT_OWNED.format(sender="m@example.org", login="mallory"),
                ),
                (
                    request(client_address=OUTSIDE, sender="x@example.net"),
                    AUTH_REQUIRED.format(client=OUTSIDE),
                ),
            ]
            t0 = time.monotonic()
            c.send(b"".join(_encode(a) for a, _ in batch))
            first = await c.reply()
            elapsed = time.monotonic() - t0
            assert first == batch[0][1]
            assert elapsed >= slow * 0.9, "the first reply cannot come before its lookup"
            for _, expected in batch[1:]:
                assert await c.reply(timeout=1) == expected
            # the later lookups really ran concurrently with the slow one
            assert directory.calls == 3
            assert time.monotonic() - t0 < slow + 0.5
            assert [r for _, r in h.decisions] == [
                "sender_not_owned",
                "allocated_network",
                "sender_owned",
                "sender_not_owned",
                "authentication_required",
            ]
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_pipelining_beyond_the_pending_limit(tmp_path: Path, loop: str) -> None:
    """More requests waiting for lookups than MAX_PENDING_PER_CONNECTION: reading pauses and
    resumes; every request is answered, in order."""
    config = make_config(tmp_path, {"cache": {"enabled": False}})
    directory = BlockingDirectory(delays={"alice": 0.002, "bob": 0.002, "nobody": 0.002})
    n = MAX_PENDING_PER_CONNECTION * 4

    async def main() -> None:
        async with serving(config, directory) as h:
            c = await Client.connect(h.address())
            batch = []
            for i in range(n):
                login = ("alice", "bob", "nobody")[i % 3]
                sender = ("alice@example.org", "bob@example.org", "x@example.org")[(i // 3) % 3]
                owned = (login, sender) in {
                    ("alice", "alice@example.org"),
                    ("bob", "bob@example.org"),
                }
                want = "OK" if owned else NOT_OWNED.format(sender=sender, login=login)
                batch.append((authed(login, sender), want))
            c.send(b"".join(_encode(a) for a, _ in batch))
            for i, (_, expected) in enumerate(batch):
                assert await c.reply() == expected, i
            assert directory.calls == n
            await c.aclose()
            assert await wait_until(lambda: not h.server.connections)

    run(main(), loop)


@replaces_methods
@LOOPS
def test_a_bug_reading_one_client_cuts_off_that_client_only(
    tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Data read from many connections in one loop iteration is handled as one batch: an
    # unexpected exception for one of them must not leave the others unanswered.
    from policyd.policy import protocol

    real_feed = protocol.RequestParser.feed_requests

    def feed(self: protocol.RequestParser, data: bytes) -> list[Request]:
        if b"boom@" in data:
            raise RuntimeError("simulated parser bug")
        return real_feed(self, data)

    monkeypatch.setattr(protocol.RequestParser, "feed_requests", feed)
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            clients = [await Client.connect(h.address()) for _ in range(6)]
            for i, c in enumerate(clients):  # all written before the server reads any
                sender = "boom@example.org" if i in (1, 4) else "alice@example.org"
                c.send(authed("alice", sender))
            for i, c in enumerate(clients):
                if i in (1, 4):
                    assert await c.read_to_eof() == b""  # closed, nothing answered
                else:
                    assert await c.reply() == "OK"
                    assert await c.ask(authed("alice", "bob@example.org")) != "OK"
            for c in clients:
                await c.aclose()
            assert await wait_until(lambda: not h.server.connections)

    run(main(), loop)
