"""Unbreakable under load, faults and bad input: the in-process server against garbage, slow
and abusive clients, a hung or broken directory, abrupt disconnects and a stop under load.

Invariants checked throughout: the server never crashes; it never answers a malformed request
(it closes the connection without a byte, so Postfix retries), and in particular never with a
permissive action; other clients keep their normal latency meanwhile; nothing leaks (fds,
tasks, connections, threads, memory).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import socket
import statistics
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyd
from policyd.config import Config, ProfileConfig
from policyd.core.decision import Decision, to_action
from policyd.core.request import Request
from policyd.directory.base import DirectoryUnavailable
from policyd.directory.cache import CachedLookups
from policyd.policy.actions import encode_action
from policyd.policy.connection import Connection as _Connection
from policyd.policy.protocol import encode_request
from policyd.policy.service import PolicyService
from policyd.runtime import Runtime, build_runtime
from tests.compiled import replaces_methods
from tests.integration.serverutil import (
    AUTH_REQUIRED,
    DEFER_INTERNAL,
    DEFER_LOOKUP,
    IN_RANGE,
    NOT_OWNED,
    OUTSIDE,
    PERMISSIVE,
    REQUIRES_LOGIN,
    RESTRICTED,
    BlockingDirectory,
    Client,
    Harness,
    authed,
    loop_kinds,
    make_config,
    open_fds,
    request,
    round_trip,
    run,
    serving,
    wait_until,
)

LOOPS = pytest.mark.parametrize("loop", loop_kinds())

NOT_ALLOWED = "553 5.7.1 Sender address <{sender}> is not allowed from network restricted"
GOOD = authed("alice", "alice@example.org")  # -> OK
FAST = request(client_address=IN_RANGE, sender="x@example.net")  # no lookup -> OK
FAST_REJECT = request(client_address=OUTSIDE, sender="x@example.net")  # no lookup -> 554


async def probe(h: Harness, n: int = 3) -> list[float]:
    """A second client's round trips while something else goes on; all must be right."""
    latencies = []
    for _ in range(n):
        action, dt = await round_trip(h.address(), GOOD, timeout=2)
        assert action == "OK"
        latencies.append(dt)
    return latencies


def _assert_fast(latencies: list[float]) -> None:
    """A round trip stays small: median < 25 ms, 95th percentile < 100 ms (and no outlier
    anywhere near a lookup deadline). Tolerant of a loaded CI machine; starvation means
    seconds."""
    ordered = sorted(latencies)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    ms = (
        f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )
    assert statistics.median(ordered) < 0.025, ms
    assert p95 < 0.1, ms
    assert ordered[-1] < 0.4, ms


def no_decisions_for(h: Harness, before: int, expected_other: int) -> None:
    """Nothing was answered except the probe's requests (server-side view: the decision hook
    runs for every reply written)."""
    assert len(h.decisions) - before == expected_other, h.decisions[before:]


# --------------------------------------------------------------------------------------------
# Garbage: hand-made

MALFORMED: dict[str, bytes] = {
    "random_bytes": bytes((i * 131 + 7) % 256 for i in range(4096)).replace(b"=", b"-") + b"\n\n",
    "nul_bytes": b"\x00" * 64 + b"\n\n",
    "nul_in_value": encode_request(GOOD).replace(b"alice@example.org", b"alice\x00@example.org", 1),
    "nul_in_name": b"request=smtpd_access_policy\nsen\x00der=a@b\n\n",
    "no_equals": b"request=smtpd_access_policy\nthis line has no equals sign\n\n",
    "empty_name": b"request=smtpd_access_policy\n=value\n\n",
    "non_utf8_line_without_equals": b"\xff\xfe\xfd\xc3\x28\x80\n\n",
    "line_of_1MB": b"sender=" + b"a" * (1 << 20) + b"\n\n",
    "line_of_1MB_without_lf": b"x" * (1 << 20),
    "10000_attributes": b"x=y\n" * 10_000 + b"\n",
    "10000_distinct_attributes": b"".join(b"a%d=%d\n" % (i, i) for i in range(10_000)) + b"\n",
    "200KB_of_blank_lines": b"\n" * 200_000,
    "200KB_of_crlf_blank_lines": b"\r\n" * 100_000,
    "http_request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "tls_client_hello": bytes.fromhex("160301020001") + bytes(range(256)) * 2 + b"\n\n",
    "lone_cr_lines": b"request=smtpd_access_policy\n\r\r\n\n",
}


@LOOPS
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_is_closed_unanswered(tmp_path: Path, loop: str, name: str) -> None:
    payload = MALFORMED[name]
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            before = len(h.decisions)
            c = await Client.connect(h.address())
            c.send(payload)
            # meanwhile another client is served normally
            latencies = await probe(h)
            got = await c.read_to_eof(timeout=5)
            assert got == b"", f"answered a malformed request: {got[:100]!r}"
            no_decisions_for(h, before, len(latencies))
            await c.aclose()
            assert await wait_until(lambda: not h.server.connections)
            await probe(h)

    run(main(), loop)


@LOOPS
def test_request_that_never_ends(tmp_path: Path, loop: str) -> None:
    """Attribute lines forever, no blank line: closed after the request size limit, unanswered,
    and other clients are served while it streams."""
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            before = len(h.decisions)
            c = await Client.connect(h.address())
            sent = 0
            closed = False
            t0 = time.monotonic()
            while sent < 8 << 20 and time.monotonic() - t0 < 5:  # bounded: 8 MB, 5 s
                try:
                    c.send(b"name=value\n" * 1000)
                    await asyncio.wait_for(c.writer.drain(), 2)
                except (ConnectionError, TimeoutError):
                    closed = True
                    break
                except RuntimeError as e:  # uvloop 0.21: writing to a transport closed under it
                    assert "closed" in str(e), e
                    closed = True
                    break
                sent += 11_000
                if sent % 44_000 == 0:
                    assert (await round_trip(h.address(), GOOD, 2))[0] == "OK"
            got = await c.read_to_eof(timeout=5)
            assert got == b""
            assert closed or c.reader.at_eof()
            assert sent < 1 << 20, f"the server kept reading {sent} bytes of one request"
            # the only decisions are the probes
            assert all(r == "sender_owned" for _, r in h.decisions[before:])
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_partial_request_then_silence_is_not_answered(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            data = encode_request(GOOD)
            c.send(data[:-1])  # everything but the terminating blank line
            assert await c.nothing_for(0.3) == b""
            await probe(h)
            c.send(data[-1:])
            assert await c.reply() == "OK"
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_a_few_blank_lines_are_skipped_without_answer(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            c.send(b"\n" * 500 + b"\r\n" * 500)
            assert await c.nothing_for(0.2) == b""
            assert not c.reader.at_eof()
            assert await c.ask(GOOD) == "OK"
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_garbage_after_a_good_request_closes_after_the_good_reply(
    tmp_path: Path, loop: str
) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            assert await c.ask(GOOD) == "OK"
            c.send(b"garbage without equals\n\n")
            assert await c.read_to_eof() == b""
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_non_utf8_values_are_answered_in_valid_utf8(tmp_path: Path, loop: str) -> None:
    """A value that is not UTF-8 is not a protocol error; the reply shows it as '?'."""
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            data = encode_request(authed("alice", "SENDER")).replace(
                b"SENDER", b"\xffal\xe9@example.org"
            )
            c.send(data)
            assert await c.reply() == NOT_OWNED.format(sender="?al?@example.org", login="alice")
            data = encode_request(authed("LOGIN", "alice@example.org")).replace(
                b"LOGIN", b"al\xc3ice"
            )
            c.send(data)
            assert await c.reply() == NOT_OWNED.format(sender="alice@example.org", login="al?ice")
            data = encode_request(request(client_address="CLIENT")).replace(b"CLIENT", b"\x80\x81")
            c.send(data)
            assert await c.reply() == AUTH_REQUIRED.format(client="??")
            await c.aclose()

    run(main(), loop)


# --------------------------------------------------------------------------------------------
# Garbage: hypothesis, against a reference model of the framing


def reference_model(data: bytes) -> tuple[list[dict[str, str]], bool]:
    """Independent model of the request framing for inputs below every size limit: the
    complete requests before the first malformed one, and whether a malformed one was seen.
    Lines end at LF; one CR before the LF is dropped; empty lines before a request are
    skipped; an empty line ends a request; every attribute line needs a non-empty name before
    "="; a NUL anywhere in a request is an error; the first value of a repeated name wins."""
    lines = data.split(b"\n")[:-1]  # the last piece has no LF yet: incomplete
    requests: list[dict[str, str]] = []
    current: list[bytes] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line == b"":
            if current:
                attrs: dict[str, str] = {}
                for item in current:
                    name, eq, value = item.partition(b"=")
                    if not eq or not name or b"\0" in item:
                        return requests, True
                    attrs.setdefault(
                        name.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape"),
                    )
                requests.append(attrs)
                current = []
            continue
        current.append(line)
    # NUL in a request whose blank line has not come yet is found only when it ends
    return requests, False


def parse_replies(data: bytes) -> list[str]:
    out = []
    while data:
        end = data.find(b"\n\n")
        assert end >= 0, f"unterminated reply {data[:100]!r}"
        line = data[:end]
        assert line.startswith(b"action=") and b"\n" not in line, line[:100]
        out.append(line[7:].decode("utf-8"))
        data = data[end + 2 :]
    return out


_LINES = st.sampled_from(
    [
        b"request=smtpd_access_policy\n",
        b"protocol_state=RCPT\n",
        b"protocol_state=rcpt\n",
        b"protocol_state=MAIL\n",
        b"sasl_username=alice\n",
        b"sasl_username=bob\n",
        b"sasl_username=\n",
        b"sender=alice@example.org\n",
        b"sender=bob@example.org\n",
        b"sender=\n",
        b"sender=\xff\xfe@example.org\n",
        b"client_address=192.0.2.10\n",
        b"client_address=198.51.100.7\n",
        b"client_address=203.0.113.9\n",
        b"client_address=::ffff:192.0.2.10\n",
        b"client_address=unknown\n",
        b"server_port=25\n",
        b"server_port=\xc2\xb2\n",
        b"policy_context=mx\n",
        b"policy_context=nope\n",
        b"=empty name\n",
        b"no equals\n",
        b"a=b=c\n",
        b"nul=\x00\n",
        b"\n",
        b"\r\n",
        b"\r",
        b"\r\r\n",
        b"x=y\r\n",
    ]
)
_PIECES = st.one_of(_LINES, _LINES, _LINES, st.binary(max_size=24))
GARBAGE = st.one_of(
    st.binary(max_size=2000),
    st.lists(_PIECES, max_size=60).map(b"".join),
)


def expected_actions(service: PolicyService, requests: list[dict[str, str]]) -> list[str]:
    out = []
    for attrs in requests:
        _, decision = service.decide_now(
            Request.from_attrs(attrs)
        )  # embedded directory: decided at once
        assert isinstance(decision, Decision)
        out.append(to_action(decision))
    return out


@pytest.mark.parametrize("loop", loop_kinds())
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=GARBAGE, cut=st.integers(min_value=0, max_value=2000))
def test_garbage_hypothesis(tmp_path: Path, loop: str, data: bytes, cut: int) -> None:
    """Whatever the bytes (sent in two writes, split at `cut`): the replies are exactly the
    answers to the well-formed requests before the first malformed one (a prefix of them when
    the malformed one arrives in the same read), then the connection closes; a malformed first
    request gets no byte at all; another client is served meanwhile."""
    service = _service(tmp_path)
    config = service.runtime.config
    model_requests, malformed = reference_model(data)
    want = expected_actions(service, model_requests)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            c.send(data[:cut])
            await c.writer.drain()
            await asyncio.sleep(0)
            c.send(data[cut:])
            with _suppress_reset():
                await c.writer.drain()
                c.writer.write_eof()
            assert (await round_trip(h.address(), GOOD, 2))[0] == "OK"
            got = parse_replies(await c.read_to_eof(timeout=5))
            if malformed:
                assert got == want[: len(got)], (got, want)
                if not model_requests:
                    assert got == []
            else:
                assert got == want
            await c.aclose()
            assert await wait_until(lambda: not h.server.connections, 2)

    run(main(), loop)


class _suppress_reset:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: object, ev: object, tb: object) -> bool:
        return et is not None and issubclass(et, (ConnectionError, OSError))  # type: ignore[arg-type]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    attrs=st.dictionaries(
        st.sampled_from(
            [
                "request",
                "protocol_state",
                "sasl_username",
                "sender",
                "client_address",
                "server_port",
                "policy_context",
                "recipient",
            ]
        ),
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                [
                    "smtpd_access_policy",
                    "RCPT",
                    "alice",
                    "Alice@Example.org",
                    "alice@example.org",
                    "bob+x@example.org",
                    "@example.org",
                    "192.0.2.10",
                    "::ffff:192.0.2.10",
                    "2001:db8::1",
                    "25",
                    "587",
                    "²",
                    "9" * 5000,
                    "mx",
                    "submission",
                    "<>",
                    "\udcff",
                ]
            ),
        ),
    )
)
def test_any_attributes_give_an_encodable_decision(tmp_path: Path, attrs: dict[str, str]) -> None:
    """PolicyService never raises on any attribute values (the server would turn that into a
    451 for a request that deserves an answer), and every decision encodes to a valid action."""
    service = _service(tmp_path)
    _, decision = service.decide_now(
        Request.from_attrs(attrs)
    )  # embedded directory: decided at once
    assert isinstance(decision, Decision)
    encode_action(to_action(decision))
    if decision.verdict.value == "defer":
        # the one deferral without a directory: a policy_context naming no profile (issue 26)
        known = service.runtime.config.profiles
        if decision.reason.value == "unknown_context" and attrs.get("policy_context") not in known:
            assert attrs.get("policy_context")
            return
        raise AssertionError(f"embedded directory cannot be unavailable: {attrs!r} -> {decision}")


_SERVICES: dict[Path, PolicyService] = {}


def _service(tmp_path: Path) -> PolicyService:
    if tmp_path not in _SERVICES:
        _SERVICES[tmp_path] = PolicyService(build_runtime(make_config(tmp_path)))
    return _SERVICES[tmp_path]


# --------------------------------------------------------------------------------------------
# Slow and many clients


@LOOPS
def test_one_byte_at_a_time(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            c = await Client.connect(h.address())
            c.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for attrs, want in [(GOOD, "OK"), (FAST_REJECT, AUTH_REQUIRED.format(client=OUTSIDE))]:
                data = encode_request(attrs)
                for i in range(len(data)):
                    c.send(data[i : i + 1])
                    await c.writer.drain()
                    await asyncio.sleep(0.0005)
                    if i % 100 == 50:
                        latencies = await probe(h, 1)
                        assert max(latencies) < 0.25
                assert await c.reply() == want
            await c.aclose()

    run(main(), loop)


@LOOPS
def test_thousand_connections_do_not_starve_others(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path, {"server": {"max_connections": 2000}})
    n = 1000

    async def main() -> None:
        async with serving(config) as h:
            clients: list[Client] = []
            for _ in range(0, n, 50):
                # in batches, each accepted before the next: under uvloop a burst overflows the
                # listen backlog (1 s SYN retransmits), which is not what this test is about
                clients += await asyncio.gather(*(Client.connect(h.address()) for _ in range(50)))
                count = len(clients)

                def all_connected(count: int = count) -> bool:
                    return len(h.server.connections) == count

                assert await wait_until(all_connected, 5, step=0.001)
            # odd ones send a partial request (all but its last byte); 50 even ones trickle
            # theirs one byte at a time; the other even ones stay silent
            payloads = [
                encode_request(authed("bob", "bob@example.org") if i % 2 else FAST_REJECT)
                for i in range(n)
            ]
            progress = [0] * n
            for i in range(1, n, 2):
                clients[i].send(payloads[i][:-1])
                progress[i] = len(payloads[i]) - 1
            stop = asyncio.Event()

            async def trickle(i: int) -> None:
                data = payloads[i]
                while not stop.is_set() and progress[i] < len(data) - 1:
                    clients[i].send(data[progress[i] : progress[i] + 1])
                    progress[i] += 1
                    await asyncio.sleep(0.02)

            tricklers = [asyncio.ensure_future(trickle(i)) for i in range(0, 100, 2)]
            await asyncio.sleep(0.1)
            latencies = []
            probe_client = await Client.connect(h.address())
            for _ in range(100):
                t0 = time.perf_counter()
                assert await probe_client.ask(GOOD, timeout=2) == "OK"
                latencies.append(time.perf_counter() - t0)
            await probe_client.aclose()
            stop.set()
            await asyncio.gather(*tricklers)
            assert any(0 < progress[i] < len(payloads[i]) - 1 for i in range(0, 100, 2))
            _assert_fast(latencies)
            # and every one of the 1000 is still served: finish the partial requests
            for i, c in enumerate(clients):
                c.send(payloads[i][progress[i] :])
            answers = await asyncio.gather(*(c.reply(timeout=10) for c in clients))
            for i, a in enumerate(answers):
                assert a == ("OK" if i % 2 else AUTH_REQUIRED.format(client=OUTSIDE))
            for c in clients:
                c.close()
            assert await wait_until(lambda: not h.server.connections, 10)

    run(main(), loop)


@LOOPS
def test_connection_cap_refuses_cleanly(tmp_path: Path, loop: str) -> None:
    cap = 20
    config = make_config(tmp_path, {"server": {"max_connections": cap}})

    async def main() -> None:
        async with serving(config) as h:
            clients = [await Client.connect(h.address()) for _ in range(cap)]
            assert await wait_until(lambda: len(h.server.connections) == cap)
            for c in clients:
                assert await c.ask(GOOD) == "OK"
            # beyond the cap: accepted by the kernel, then closed by us without a byte
            for _ in range(3):
                extra = await Client.connect(h.address())
                extra.send(encode_request(GOOD))
                with _suppress_reset():
                    await extra.writer.drain()
                assert await extra.read_to_eof(timeout=3) == b""
                await extra.aclose()
            assert h.server.refused == 3
            assert len(h.server.connections) == cap
            # the existing ones keep working
            for c in clients:
                assert await c.ask(FAST_REJECT) == AUTH_REQUIRED.format(client=OUTSIDE)
            # a freed slot is usable again
            await clients.pop().aclose()
            assert await wait_until(lambda: len(h.server.connections) == cap - 1)
            c = await Client.connect(h.address())
            assert await c.ask(GOOD) == "OK"
            clients.append(c)
            assert h.server.refused == 3
            for c in clients:
                await c.aclose()

    run(main(), loop)


@LOOPS
def test_silent_connections_end_at_the_idle_timeout(tmp_path: Path, loop: str) -> None:
    """A connection that stays silent is closed (without a byte) after server.idle_timeout;
    one that keeps sending is not. (The config floor is 300 s; the test lowers it in place.)"""
    config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            lowered = dataclasses.replace(config.server, idle_timeout=0.3)
            h.service.runtime = dataclasses.replace(
                h.runtime, config=dataclasses.replace(config, server=lowered)
            )
            silent = await Client.connect(h.address())
            partial = await Client.connect(h.address())
            partial.send(b"request=smtpd_access_policy\n")
            busy = await Client.connect(h.address())
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.6:
                assert await busy.ask(GOOD) == "OK"
                await asyncio.sleep(0.1)
            assert await silent.read_to_eof(timeout=2) == b""
            assert await partial.read_to_eof(timeout=2) == b""
            assert time.monotonic() - t0 < 3
            assert await busy.ask(GOOD) == "OK"
            for c in (silent, partial, busy):
                await c.aclose()

    run(main(), loop)


# --------------------------------------------------------------------------------------------
# A hung directory under load


def _pool_queue(h: Harness) -> int:
    assert isinstance(h.runtime.lookups, CachedLookups)
    pool = h.runtime.lookups.runner._pool
    assert pool is not None
    return pool._work_queue.qsize()


def _live_connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, _Connection))


async def _hang_round(
    h: Harness, directory: BlockingDirectory, tag: str, duration: float, deadline: float
) -> tuple[list[float], list[float]]:
    """Hang the directory; clients needing a lookup and clients needing none run side by side
    for `duration`. Returns (fast latencies, lookup latencies)."""
    directory.hang()
    fast: list[float] = []
    slow: list[float] = []
    end = time.monotonic() + duration

    async def fast_client(i: int) -> None:
        c = await Client.connect(h.address())
        n = 0
        while time.monotonic() < end:
            attrs, want = (
                (FAST, "OK") if n % 2 else (FAST_REJECT, AUTH_REQUIRED.format(client=OUTSIDE))
            )
            t0 = time.perf_counter()
            assert await c.ask(attrs, timeout=2) == want
            fast.append(time.perf_counter() - t0)
            n += 1
            await asyncio.sleep(0.005)
        await c.aclose()

    async def lookup_client(i: int) -> None:
        c = await Client.connect(h.address())
        n = 0
        while time.monotonic() < end:
            login = f"user{tag}-{i}-{n}"  # distinct logins: no cache hit, no coalescing
            if n % 3 == 2:  # and an unauthenticated sender on the mx profile: owners_of
                attrs = request(
                    client_address=OUTSIDE, sender=f"{login}@example.org", server_port="25"
                )
            else:
                attrs = authed(login, "alice@example.org")
            t0 = time.perf_counter()
            action = await c.ask(attrs, timeout=deadline + 2)
            slow.append(time.perf_counter() - t0)
            assert action == DEFER_LOOKUP, action
            n += 1
        await c.aclose()

    await asyncio.gather(
        *(fast_client(i) for i in range(8)), *(lookup_client(i) for i in range(12))
    )
    directory.release()
    return fast, slow


@LOOPS
def test_hung_directory_under_load(tmp_path: Path, loop: str) -> None:
    deadline, threads = 0.5, 4
    config = make_config(tmp_path, {"directory": {"lookup_deadline": deadline, "threads": threads}})
    directory = BlockingDirectory()
    baseline_threads = threading.active_count()

    async def main() -> None:
        async with serving(config, directory) as h:
            assert h.runtime.lookups is not None
            tasks0 = len(asyncio.all_tasks())
            fast, slow = await _hang_round(h, directory, "a", 1.3, deadline)
            assert len(fast) > 50 and len(slow) >= 24
            _assert_fast(fast)
            assert min(slow) > deadline * 0.9
            assert max(slow) < deadline + 0.4, f"451 took {max(slow):.2f}s (deadline {deadline}s)"
            # the hang ends: nothing is left behind
            assert await wait_until(lambda: directory.inside == 0, 5)
            assert await wait_until(lambda: _pool_queue(h) == 0, 5)
            assert threading.active_count() <= baseline_threads + threads
            assert await wait_until(lambda: not h.server.connections, 5)
            assert isinstance(h.runtime.lookups, CachedLookups)
            assert not h.runtime.lookups._inflight
            assert await wait_until(lambda: len(asyncio.all_tasks()) == tasks0, 5)
            # and lookups work again
            assert (await round_trip(h.address(), authed("bob", "bob@example.org")))[0] == "OK"
            assert (await round_trip(h.address(), authed("bob", "alice@example.org")))[0] == (
                NOT_OWNED.format(sender="alice@example.org", login="bob")
            )

            # a second hang: memory allocated meanwhile by policyd/asyncio must not stay
            # (log records kept by pytest's log capture would hold exceptions and their
            # frames: logging is off while measuring)
            logging.disable(logging.CRITICAL)
            tracemalloc.start(1)
            try:
                before = _traced(tracemalloc.take_snapshot())
                await _hang_round(h, directory, "b", 1.0, deadline)
                assert await wait_until(lambda: directory.inside == 0 and _pool_queue(h) == 0, 5)
                assert await wait_until(lambda: not h.server.connections, 5)
                assert await wait_until(lambda: len(asyncio.all_tasks()) == tasks0, 5)
                gc.collect()
                after = _traced(tracemalloc.take_snapshot())
            finally:
                tracemalloc.stop()
                logging.disable(logging.NOTSET)
            assert after - before < 64 * 1024, f"{after - before} bytes retained"
            assert threading.active_count() <= baseline_threads + threads
            assert _live_connections() == 0
            assert len(h.runtime.lookups) <= 2  # only the bob entry was cached (and alice's?)

    run(main(), loop)


def _traced(snapshot: tracemalloc.Snapshot) -> int:
    filters = [
        # the package's own directory: "*/policyd/*" would also count this test's files when
        # the checkout itself is named policyd
        tracemalloc.Filter(True, str(Path(policyd.__file__).parent / "*")),
        tracemalloc.Filter(True, "*/asyncio/*"),
        tracemalloc.Filter(True, "*/concurrent/*"),
    ]
    return sum(s.size for s in snapshot.filter_traces(filters).statistics("filename"))


# --------------------------------------------------------------------------------------------
# Abrupt disconnects


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _raw_connect(address: str, rcvbuf: int | None = None) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:  # small kernel buffers: a client that stops reading blocks us early
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, int(port))), 5)
    return sock


@LOOPS
def test_abrupt_disconnects_leak_nothing(tmp_path: Path, loop: str) -> None:
    config = make_config(
        tmp_path, {"cache": {"enabled": False}, "directory": {"lookup_deadline": 1.0}}
    )
    directory = BlockingDirectory(delays={"alice": 0.15})
    rounds = 10

    async def main() -> None:
        lp = asyncio.get_running_loop()
        async with serving(config, directory) as h:
            await probe(h, 1)
            assert await wait_until(lambda: not h.server.connections, 2)
            await asyncio.sleep(0.05)
            fds0 = open_fds()
            tasks0 = len(asyncio.all_tasks())
            for _ in range(rounds):
                # 1. mid-request: half a request, then RST
                s = await _raw_connect(h.address())
                await lp.sock_sendall(s, encode_request(GOOD)[:40])
                await asyncio.sleep(0.01)
                _rst_close(s)
                # 2. mid-lookup: a request waiting for its (slow) lookup, then RST
                s = await _raw_connect(h.address())
                await lp.sock_sendall(s, encode_request(GOOD) * 3)
                assert await wait_until(lambda: h.server.in_flight > 0, 2)
                _rst_close(s)
                # 3. RST right after connecting
                s = await _raw_connect(h.address())
                _rst_close(s)
            # 4. mid-reply: the client stops reading while many replies are being written
            before = set(h.server.connections)
            s = await _raw_connect(h.address(), rcvbuf=4096)
            conn = await _server_side(h, before)
            _small_sndbuf(conn)
            await _fill_until_blocked(s, lambda: _server_buffering(h), seconds=3)
            del conn, before  # count only what the server itself keeps
            assert _server_buffering(h), "could not make the server wait on a slow reader"
            _rst_close(s)

            assert await wait_until(lambda: not h.server.connections, 5)
            assert await wait_until(lambda: h.server.in_flight == 0, 5)
            assert await wait_until(lambda: len(asyncio.all_tasks()) == tasks0, 5), (
                asyncio.all_tasks()
            )
            assert await wait_until(lambda: open_fds() == fds0, 5), (open_fds(), fds0)
            assert _live_connections() == 0
            await probe(h)

    run(main(), loop)


async def _server_side(h: Harness, before: set[_Connection]) -> _Connection:
    """The server's _Connection for the client that connected after `before` was taken."""
    assert await wait_until(lambda: bool(h.server.connections - before), 2)
    new = h.server.connections - before
    assert len(new) == 1
    return new.pop()


def _small_sndbuf(conn: _Connection) -> None:
    """Shrink the server-side socket's send buffer so its write buffer fills quickly. (Not
    its receive buffer: shrinking that after the handshake stalls TCP on a zero window.)"""
    assert conn.transport is not None
    sock = conn.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


# needs no lookup; its reply (553 ... not allowed from network restricted) is ~500 bytes
LONG_ATTRS = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "client_address": RESTRICTED,
    "sender": "x" * 400 + "@example.org",
}
LONG_REPLY = encode_request(LONG_ATTRS)


async def _fill_until_blocked(s: socket.socket, done: Callable[[], bool], seconds: float) -> int:
    """Pipeline requests with long replies without reading, until `done()` or the send blocks
    for 0.5 s or `seconds` pass. Returns the number of requests sent."""
    lp = asyncio.get_running_loop()
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and not done():
        try:
            await asyncio.wait_for(lp.sock_sendall(s, LONG_REPLY * 50), 0.5)
        except TimeoutError:
            break
        sent += 50
    return sent


def _server_buffering(h: Harness) -> bool:
    return any(
        c.transport is not None and c.transport.get_write_buffer_size() > 0
        for c in h.server.connections
    )


@LOOPS
def test_client_that_never_reads_cannot_grow_our_buffers(tmp_path: Path, loop: str) -> None:
    """A client pipelining requests but never reading the replies: once our write buffer is
    full we stop reading from it (flow control), so memory stays bounded; when it reads
    again, every reply arrives, in order."""
    config = make_config(tmp_path)

    async def main() -> None:
        lp = asyncio.get_running_loop()
        async with serving(config) as h:
            before = set(h.server.connections)
            s = await _raw_connect(h.address(), rcvbuf=4096)
            conn = await _server_side(h, before)
            _small_sndbuf(conn)
            assert conn.transport is not None
            peak = 0

            def watch() -> bool:
                nonlocal peak
                peak = max(peak, conn.transport.get_write_buffer_size())  # type: ignore[union-attr]
                return False

            sent = await _fill_until_blocked(s, watch, seconds=4)
            watch()
            assert peak > 0, "the test did not make the server buffer"
            # the client was blocked: we stopped reading (4 s at full speed would be far more)
            assert sent * len(LONG_REPLY) < 16 << 20, sent
            assert peak < 1 << 20, f"write buffer grew to {peak} bytes"
            # now read everything: all answered, in order
            _, decision = await h.service.decide(Request.from_attrs(LONG_ATTRS))
            want = to_action(decision)
            assert want.startswith(NOT_ALLOWED.format(sender="x" * 300)[:300])
            expected = ("action=" + want + "\n\n").encode()
            # (the last, timed-out send may have gone out partly: count what arrives)
            received = b""
            t0 = time.monotonic()
            while time.monotonic() - t0 < 10:
                try:
                    chunk = await asyncio.wait_for(lp.sock_recv(s, 1 << 20), 0.5)
                except TimeoutError:
                    break
                assert chunk, "closed early"
                received += chunk
            assert received == expected * (len(received) // len(expected))
            assert len(received) // len(expected) >= sent
            s.close()

    run(main(), loop)


# --------------------------------------------------------------------------------------------
# Stop (SIGTERM) with requests in flight


@LOOPS
def test_stop_drains_in_flight_requests(tmp_path: Path, loop: str) -> None:
    slow = 0.4
    config = make_config(tmp_path, {"cache": {"enabled": False}})
    directory = BlockingDirectory(delays={"alice": slow})

    async def main() -> None:
        async with serving(config, directory) as h:
            address = h.address()
            busy = [await Client.connect(address) for _ in range(5)]
            idle = [await Client.connect(address) for _ in range(3)]
            partial = await Client.connect(address)
            for c in busy:
                c.send(GOOD)
            partial.send(encode_request(FAST)[:-1])
            assert await wait_until(lambda: h.server.in_flight == 5, 2)
            t0 = time.monotonic()
            stopping = asyncio.ensure_future(h.server.stop(5.0))
            await asyncio.sleep(0.05)
            # new connections are refused once stop() began
            with pytest.raises(OSError):
                await Client.connect(address, timeout=1)
            # idle connections close at once, without a byte
            for c in idle:
                assert await c.read_to_eof(timeout=1) == b""
                await c.aclose()
            # a request completed during the drain is still answered, then closed
            partial.send(b"\n")
            assert await partial.reply(timeout=1) == "OK"
            assert await partial.read_to_eof(timeout=1) == b""
            await partial.aclose()
            # in-flight requests are answered, then the connection closes
            for c in busy:
                assert await c.reply(timeout=2) == "OK"
                assert await c.read_to_eof(timeout=2) == b""
                await c.aclose()
            await asyncio.wait_for(stopping, 5)
            elapsed = time.monotonic() - t0
            assert slow * 0.8 < elapsed < slow + 1.0, elapsed
            assert not h.server.connections
            for c in [*busy, *idle, partial]:
                await c.aclose()

    run(main(), loop)


@LOOPS
def test_stop_is_bounded_when_the_directory_hangs(tmp_path: Path, loop: str) -> None:
    config = make_config(tmp_path, {"directory": {"lookup_deadline": 3.0}})
    directory = BlockingDirectory()

    async def main() -> None:
        async with serving(config, directory) as h:
            c = await Client.connect(h.address())
            assert await c.ask(FAST) == "OK"
            directory.hang()
            c.send(authed("stuck", "alice@example.org"))
            assert await wait_until(lambda: h.server.in_flight == 1, 2)
            t0 = time.monotonic()
            await asyncio.wait_for(h.server.stop(0.3), 5)
            assert time.monotonic() - t0 < 1.5
            assert not h.server.connections
            # closed without an answer (Postfix retries): never a permissive one
            assert await c.read_to_eof(timeout=2) == b""
            await c.aclose()

    run(main(), loop)


# --------------------------------------------------------------------------------------------
# Errors never permit


def _unexpected(kind: str) -> BaseException:
    return {
        "RuntimeError": RuntimeError("boom"),
        "KeyError": KeyError("boom"),
        "OSError": OSError(5, "I/O error"),
        "TypeError": TypeError("boom"),
    }[kind]


@LOOPS
@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "threaded"])
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("kind", ["RuntimeError", "KeyError", "OSError", "TypeError"])
def test_unexpected_directory_errors_defer(
    tmp_path: Path, loop: str, blocking: bool, cache: bool, kind: str
) -> None:
    config = make_config(tmp_path, {"cache": {"enabled": cache}})
    exc = _unexpected(kind)
    directory = BlockingDirectory(blocking=blocking, fail={"boom": exc, "boom@example.org": exc})

    async def main() -> None:
        async with serving(config, directory) as h:
            c = await Client.connect(h.address())
            for _ in range(3):
                action = await c.ask(authed("boom", "alice@example.org"))
                assert action == DEFER_INTERNAL
                # unauthenticated on mx: owners_of raises
                action = await c.ask(request(sender="boom@example.org", server_port="25"))
                assert action == DEFER_INTERNAL
                # the same connection keeps serving
                assert await c.ask(authed("alice", "alice@example.org")) == "OK"
                assert await c.ask(FAST_REJECT) == AUTH_REQUIRED.format(client=OUTSIDE)
                assert await c.ask(request(sender="bob@example.org", server_port="25")) == (
                    REQUIRES_LOGIN.format(sender="bob@example.org")
                )
            await c.aclose()
            # a bug is counted and logged as itself, not as an unavailable directory
            reasons = [r for _, r in h.decisions]
            assert reasons.count("internal_error") == 6, reasons
            assert "directory_unavailable" not in reasons
            await probe(h)

    run(main(), loop)


@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "threaded"])
def test_directory_unavailable_defers_with_the_configured_reply(
    tmp_path: Path, blocking: bool
) -> None:
    config = make_config(tmp_path, {"cache": {"enabled": False}})
    directory = BlockingDirectory(blocking=blocking, fail={"*": DirectoryUnavailable("down")})

    async def main() -> None:
        async with serving(config, directory) as h:
            c = await Client.connect(h.address())
            assert await c.ask(authed("alice", "alice@example.org")) == DEFER_LOOKUP
            assert await c.ask(request(sender="bob@example.org", server_port="25")) == DEFER_LOOKUP
            assert await c.ask(FAST) == "OK"  # no lookup needed
            assert await c.ask(authed("alice", "")) == "DUNNO"  # null sender: no lookup
            await c.aclose()

    run(main())


class _OddDirectory(BlockingDirectory):
    """Returns something that is not a frozenset of addresses."""

    def __init__(self, value: object, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.value = value

    def addresses_of(self, login: str) -> frozenset[str]:
        self._enter(login)
        return self.value  # type: ignore[return-value]


@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "threaded"])
def test_directory_returning_none_defers(tmp_path: Path, blocking: bool) -> None:
    config = make_config(tmp_path)
    directory = _OddDirectory(None, blocking=blocking)

    async def main() -> None:
        async with serving(config, directory) as h:
            c = await Client.connect(h.address())
            for _ in range(2):
                action = await c.ask(authed("alice", "alice@example.org"))
                assert action not in PERMISSIVE and action.startswith("451 4.3.0"), action
            await c.aclose()

    run(main())


def test_failing_decision_hook_does_not_break_answers(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    def bad_hook(req: Request, profile: str, decision: object, elapsed: float) -> None:
        raise RuntimeError("broken log handler")

    async def main() -> None:
        async with serving(config) as h:
            h.server.hooks.append(bad_hook)
            c = await Client.connect(h.address())
            assert await c.ask(GOOD) == "OK"
            assert await c.ask(FAST_REJECT) == AUTH_REQUIRED.format(client=OUTSIDE)
            await c.aclose()

    run(main())


@replaces_methods
def test_a_bug_in_the_service_defers(tmp_path: Path) -> None:
    """Any exception while deciding (here: select_profile) becomes a 451, never a pass."""
    config: Config = make_config(tmp_path)

    async def main() -> None:
        async with serving(config) as h:
            calls = {"n": 0}
            original = h.service.select_profile

            def flaky(req: Request, rt: Runtime | None = None) -> ProfileConfig | None:
                calls["n"] += 1
                if req.sender == "trigger@example.org":
                    raise ZeroDivisionError("bug")
                return original(req, rt)

            h.service.select_profile = flaky  # type: ignore[method-assign]
            c = await Client.connect(h.address())
            assert (
                await c.ask(request(client_address=IN_RANGE, sender="trigger@example.org"))
                == DEFER_INTERNAL
            )
            assert await c.ask(GOOD) == "OK"
            await c.aclose()

    run(main())
