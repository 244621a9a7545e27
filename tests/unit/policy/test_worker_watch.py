"""policy/worker_watch.py: which workers count as hung, the timeout from systemd's, and the
notify messages read with their sender's PID (the supervisor's side; test_workers.py has the
whole story with real processes)."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import pytest

from policyd.policy.worker_watch import (
    WORKER_WATCHDOG,
    kill_hung,
    notify_messages,
    worker_timeout,
    worker_watchdog_env,
)


@dataclass
class FakeWorker:
    slot: int
    pinged: float
    proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.poll() is not None else self.proc.pid


def test_only_a_worker_silent_longer_than_the_timeout_is_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        hung = FakeWorker(1, 100.0, procs[0])
        fresh = FakeWorker(2, 125.0, procs[1])
        starting = FakeWorker(3, 0.0, procs[2])  # (no message yet: its start's business)
        gone = FakeWorker(4, 1.0, None)
        with caplog.at_level("ERROR", logger="policyd.workers"):
            assert kill_hung([hung, fresh, starting, gone], 20.0, clock=lambda: 130.0) == [
                procs[0].pid
            ]
        assert procs[0].wait(5) == -9
        assert procs[1].poll() is None and procs[2].poll() is None
        assert f"worker 1 (pid {procs[0].pid}) hung: no watchdog ping" in caplog.text
        assert "for 30.0s" in caplog.text
        # once per process: not again while it is being reaped
        assert hung.pinged == 0.0
        assert kill_hung([hung, fresh], 20.0, clock=lambda: 140.0) == []
        assert kill_hung([fresh], 20.0, clock=lambda: 145.1) == [procs[1].pid]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_the_timeout_is_the_supervisors_own_watchdog_else_30s() -> None:
    assert worker_timeout({}) == WORKER_WATCHDOG == 30.0
    assert worker_timeout({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert worker_timeout({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 4.0
    # (meant for another process, or malformed: the default)
    assert worker_timeout({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) == 30.0
    assert worker_timeout({"WATCHDOG_USEC": "x"}) == 30.0
    # the worker's App pings every half of it
    assert worker_watchdog_env(4.0) == {"WATCHDOG_USEC": "4000000"}


def test_notify_messages_carry_the_senders_pid() -> None:
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    rx.bind(b"\0policyd-test-watch-" + os.urandom(6).hex().encode())
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert list(notify_messages(rx)) == []
        tx.sendto(b"WATCHDOG=1", rx.getsockname())
        tx.sendto(b"READY=1\nSTATUS=x", rx.getsockname())
        assert list(notify_messages(rx)) == [
            (os.getpid(), b"WATCHDOG=1"),
            (os.getpid(), b"READY=1\nSTATUS=x"),
        ]
    finally:
        tx.close()
        rx.close()
