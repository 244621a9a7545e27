"""policy/connection.py: requests that wait (a directory lookup, a quota check at the store)
answered in request order, and the connection's tail forgotten exactly when the last waiting
request is answered (then a request decided at once is answered at once again). The service's
decide_now is scripted: pure run only (the compiled run has the same source; its order of
replies is tested through real lookups in tests/integration/test_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from policyd.config import ProfileConfig
from policyd.core.decision import Decision, Reason, Verdict
from policyd.core.later import Later
from policyd.core.request import Request
from policyd.policy.actions import INTERNAL_ERROR, encode_decision
from policyd.policy.connection import Connection
from policyd.policy.protocol import encode_request
from policyd.policy.server import PolicyServer
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from tests.compiled import replaces_methods
from tests.integration.serverutil import authed, make_config
from tests.unit.policy.test_server_batch import Transport, written


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def reply(n: str) -> Decision:
    return Decision(Verdict.REJECT, Reason.SENDER_NOT_OWNED, f"554 5.7.1 r{n}")


class Scripted:
    """decide_now: the request's sender names it; "wN" waits for `waits[N]` (a coroutine), "fN"
    is a Later on `futures[N]` (as a quota check at the shared store gives it), the rest is
    decided at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waits: dict[str, asyncio.Future[None]] = {}
        self.futures: dict[str, asyncio.Future[Decision]] = {}

    def __call__(self, req: Request) -> tuple[ProfileConfig, Decision | Awaitable[Decision]]:
        name = req.sender.split("@")[0]
        profile = ProfileConfig(name="p")
        if name.startswith("f"):
            self.futures[name] = self.loop.create_future()
            return profile, Later(self.futures[name], lambda f: f.result())
        if not name.startswith("w"):
            return profile, reply(name)
        fut = self.waits[name] = self.loop.create_future()

        async def later() -> Decision:
            await fut
            return reply(name)

        return profile, later()


def setup(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> tuple[Connection, Scripted]:
    srv = PolicyServer(PolicyService(build_runtime(make_config(tmp_path))))
    srv.hub.loop = loop
    scripted = Scripted(loop)
    srv.service.decide_now = scripted  # type: ignore[method-assign]
    conn = Connection(srv.hub)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    return conn, scripted


def send(conn: Connection, *names: str) -> None:
    conn.data_received(b"".join(encode_request(authed("a", f"{n}@example.org")) for n in names))


def run(loop: asyncio.AbstractEventLoop, n: int = 5) -> None:
    for _ in range(n):
        loop.run_until_complete(asyncio.sleep(0))


def answers(conn: Connection) -> list[str]:
    return [w.decode().split()[-1] for w in written(conn)]


@replaces_methods
def test_waiting_requests_answered_in_order_then_the_tail_is_forgotten(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    conn, s = setup(tmp_path, loop)
    send(conn, "w1", "w2", "n3")
    run(loop)
    assert answers(conn) == []
    s.waits["w2"].set_result(None)  # the later one is done first: it waits for w1
    run(loop)
    assert answers(conn) == []
    s.waits["w1"].set_result(None)
    run(loop)
    assert answers(conn) == ["rw1", "rw2", "rn3"]
    assert conn.tail is None and conn.pending == 0
    send(conn, "n4")  # (the loop does not run: answered at once)
    assert answers(conn)[-1] == "rn4"


@replaces_methods
def test_an_earlier_waiting_request_done_first_keeps_the_later_ones_tail(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """The tail is forgotten only by the last waiting request: when an earlier one is answered
    first, a request decided at once still waits for the later one."""
    conn, s = setup(tmp_path, loop)
    send(conn, "w1", "w2")
    run(loop)
    s.waits["w1"].set_result(None)
    run(loop)
    assert answers(conn) == ["rw1"]
    assert conn.tail is not None
    send(conn, "n3")
    run(loop)
    assert answers(conn) == ["rw1"]  # n3 after w2, not before
    s.waits["w2"].set_result(None)
    run(loop)
    assert answers(conn) == ["rw1", "rw2", "rn3"]
    assert conn.tail is None and conn.pending == 0


@replaces_methods
def test_a_future_is_answered_from_its_callback_and_later_requests_wait_for_it(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """The quota store's path: the decision is a future; the reply comes from its done-callback
    (no Task made), and the connection's later requests, decided at once or not, are answered
    after it, in order."""
    conn, s = setup(tmp_path, loop)
    send(conn, "f1")
    assert conn.tail is s.futures["f1"] and conn.pending == 1
    assert not asyncio.all_tasks(loop)  # (no Task for it)
    send(conn, "n2", "f3")
    s.futures["f3"].set_result(reply("f3"))  # the later one first: it waits for f1
    run(loop)
    assert answers(conn) == []
    s.futures["f1"].set_result(reply("f1"))
    run(loop)
    assert answers(conn) == ["rf1", "rn2", "rf3"]
    assert conn.tail is None and conn.pending == 0
    send(conn, "f4")  # alone again: the callback path
    assert conn.tail is s.futures["f4"]
    s.futures["f4"].set_result(reply("f4"))
    run(loop)
    assert answers(conn)[-1] == "rf4" and conn.tail is None and conn.pending == 0


@replaces_methods
def test_a_failed_or_cancelled_future_answers_the_internal_error(
    tmp_path: Path, loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug on the callback path defers (never permits), is logged, and frees the tail."""
    conn, s = setup(tmp_path, loop)
    send(conn, "f1")
    with caplog.at_level("ERROR", logger="policyd.server"):
        s.futures["f1"].set_exception(RuntimeError("bug"))
        run(loop)
    assert written(conn)[-1] == encode_decision(INTERNAL_ERROR)  # (451 4.3.0)
    assert "internal error deciding a request" in caplog.text and "bug" in caplog.text
    assert conn.tail is None and conn.pending == 0
    send(conn, "f2")
    s.futures["f2"].cancel()
    run(loop)
    assert len(written(conn)) == 2 and written(conn)[-1] == written(conn)[0]
    assert conn.tail is None and conn.pending == 0
    # a later request waiting on a store call that fails, or is cancelled, is still answered,
    # after it
    for how in ("fail", "cancel"):
        send(conn, "f5", "n6")
        run(loop)
        if how == "fail":
            s.futures["f5"].set_exception(RuntimeError("store gone"))
        else:
            s.futures["f5"].cancel()
        run(loop)
        assert written(conn)[-2:] == [encode_decision(INTERNAL_ERROR), encode_decision(reply("n6"))]
        assert conn.tail is None and conn.pending == 0
