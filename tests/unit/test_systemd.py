"""policyd.systemd: sd_notify (path and abstract sockets, never raising, never blocking), the
watchdog interval (WATCHDOG_USEC/WATCHDOG_PID) and listen_fds (LISTEN_*), without systemd."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.systemd import Notifier, listen_fds, reloading_state, watchdog_interval

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix socket paths (108-byte limit; tmp_path can be long)."""
    with tempfile.TemporaryDirectory(prefix="pd-", dir="/tmp") as d:
        yield Path(d)


def _receiver(address: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(2)
    return s


# --------------------------------------------------------------------------------------------
# sd_notify


def test_notify_to_a_path_socket(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    rx = _receiver(path)
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n("READY=1\nSTATUS=up") is True
    assert rx.recv(4096) == b"READY=1\nSTATUS=up"
    assert n("WATCHDOG=1") is True
    assert rx.recv(4096) == b"WATCHDOG=1"
    assert n.sent == 2
    n.close()
    rx.close()


def test_notify_to_an_abstract_socket() -> None:
    name = f"policyd-test-{uuid.uuid4().hex}"
    rx = _receiver(b"\0" + name.encode())
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert n("STOPPING=1") is True
    assert rx.recv(4096) == b"STOPPING=1"
    n.close()
    rx.close()


def test_notify_without_socket_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "relative/path"})("READY=1") is False


def test_notify_to_a_missing_socket_never_raises(short_dir: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(short_dir / "nobody-listens")})
    assert n("READY=1") is False
    assert n.dropped == 1
    n2 = Notifier({"NOTIFY_SOCKET": f"@policyd-nobody-{uuid.uuid4().hex}"})
    assert n2("READY=1") is False


def test_notify_drops_instead_of_blocking_when_the_queue_is_full(short_dir: Path) -> None:
    path = str(short_dir / "full")
    rx = _receiver(path)  # never read: its queue fills up
    n = Notifier({"NOTIFY_SOCKET": path})
    started = time.monotonic()
    for _ in range(5000):
        n("WATCHDOG=1\nSTATUS=" + "x" * 200)
        if n.dropped:
            break
    assert n.dropped >= 1, "the receive queue never filled up"
    assert time.monotonic() - started < 2.0  # it never blocked
    rx.close()


def test_reloading_state_carries_monotonic_usec() -> None:
    lines = reloading_state().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now - int(value) < 5_000_000


# --------------------------------------------------------------------------------------------
# watchdog


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4242"}, 0.1),  # our pid (below)
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4243"}, None),  # someone else's
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_pid_defaults_to_our_pid() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 0.5
    env["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert watchdog_interval(env) is None


# --------------------------------------------------------------------------------------------
# listen_fds: run in a child so fds 3 and 4 can be set up freely

_CHILD = r"""
import json, os, socket, sys
from policyd.systemd import listen_fds
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
uds = socket.socket(socket.AF_UNIX); uds.bind(sys.argv[1]); uds.listen()
os.dup2(tcp.fileno(), 20); os.dup2(uds.fileno(), 21)  # the sockets may be fds 3 and 4 now
tcp.close(); uds.close()
os.dup2(20, 3); os.dup2(21, 4); os.close(20); os.close(21)
os.environ.update(
    LISTEN_FDS="2", LISTEN_FDNAMES=sys.argv[2], LISTEN_PID=sys.argv[3] or str(os.getpid())
)
got = listen_fds()
out = {
    "got": [[n, s.fileno(), int(s.family), int(s.type), str(s.getsockname())] for n, s in got],
    "env": [k for k in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID") if k in os.environ],
    "inheritable": [os.get_inheritable(s.fileno()) for _, s in got],
}
print(json.dumps(out))
"""


def _run_child(path: str, names: str, pid: str = "") -> dict[str, list[Any]]:
    """The child's JSON report: "got" [name, fd, family, type, address], "env", "inheritable"."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, path, names, pid],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    result: dict[str, list[Any]] = json.loads(out.stdout)
    return result


def test_listen_fds_adopts_passed_sockets_with_names(short_dir: Path) -> None:
    path = str(short_dir / "s")
    r = _run_child(path, "tcp:unix")
    got = r["got"]
    assert [(g[0], g[1], g[2], g[3]) for g in got] == [
        ("tcp", 3, socket.AF_INET, socket.SOCK_STREAM),
        ("unix", 4, socket.AF_UNIX, socket.SOCK_STREAM),
    ]
    assert got[1][4] == path
    assert r["env"] == []  # unset, so children do not take them
    assert r["inheritable"] == [False, False]


def test_listen_fds_missing_names_are_empty(short_dir: Path) -> None:
    r = _run_child(str(short_dir / "s"), "")
    assert [g[0] for g in r["got"]] == ["", ""]


def test_listen_fds_for_another_pid_are_ignored(short_dir: Path) -> None:
    r = _run_child(str(short_dir / "s"), "tcp:unix", pid="1")
    assert r["got"] == []
    assert sorted(r["env"]) == ["LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID"]  # left alone


def test_listen_fds_without_environment() -> None:
    env: dict[str, str] = {}
    assert listen_fds(env=env) == []
    env = {"LISTEN_PID": "x", "LISTEN_FDS": "2"}
    assert listen_fds(env=env) == []


# --- until_signalled / watchdog (shared by the policy server's App and the web page's) ---------


def test_until_signalled_returns_on_sigterm_and_runs_the_extra_handlers() -> None:
    import asyncio
    import signal

    from policyd.systemd import until_signalled

    hups: list[int] = []

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGHUP)
        loop.call_later(0.10, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(
            until_signalled(stopping, {signal.SIGHUP: lambda: hups.append(1)}), 5
        )
        assert stopping.is_set()
        # the handlers are gone: the loop no longer catches SIGTERM
        assert not loop.remove_signal_handler(signal.SIGTERM)
        assert not loop.remove_signal_handler(signal.SIGHUP)

    asyncio.run(main())
    assert hups == [1]


def test_watchdog_pings_every_interval_until_cancelled() -> None:
    import asyncio

    from policyd.systemd import watchdog

    sent: list[str] = []

    async def main() -> None:
        task = asyncio.ensure_future(watchdog(sent.append, 0.02))
        for _ in range(250):  # three pings, 5 s at most on a busy machine
            if len(sent) >= 3:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        n = len(sent)
        await asyncio.sleep(0.1)
        assert len(sent) == n  # cancelled: no more pings

    asyncio.run(main())
    assert len(sent) >= 3 and set(sent) == {"WATCHDOG=1"}


class _Steps:
    """A daemon that records its lifecycle steps (start fails when told to)."""

    def __init__(self, fail_start: bool = False) -> None:
        self.steps: list[str] = []
        self.fail_start = fail_start

    def load(self) -> None:
        self.steps.append("load")

    async def start(self) -> None:
        self.steps.append("start")
        if self.fail_start:
            raise OSError("address in use")

    def ready(self) -> None:
        self.steps.append("ready")

    async def until_signalled(self) -> None:
        raise AssertionError("the trigger given replaces the signals")

    async def stop(self) -> None:
        self.steps.append("stop")


def test_serve_daemon_runs_the_five_steps_in_order_and_stops_after_a_failed_start() -> None:
    import asyncio

    from policyd.systemd import serve_daemon

    async def trigger() -> None:
        d.steps.append("wait")
        await asyncio.sleep(0)

    # the trigger starts before READY=1 (the default one installs the signal handlers: a
    # SIGHUP the moment READY=1 arrives must find them), and is awaited after it
    d = _Steps()
    asyncio.run(serve_daemon(d, trigger))
    assert d.steps == ["load", "start", "wait", "ready", "stop"]
    d = _Steps(fail_start=True)
    with pytest.raises(OSError):
        asyncio.run(serve_daemon(d, trigger))
    assert d.steps == ["load", "start", "stop"]
