"""The supervisor's watch over its workers (policy/workers.py): their sd_notify messages, and
a hung worker killed (and so restarted).

systemd's watchdog sees only the supervisor, which answers it from its own event loop; a worker
whose loop is stuck (an endless loop, a blocking call without deadline, SIGSTOP) would keep its
connections and their requests unanswered until Postfix's policy timeout defers the mail. So
each worker gets a watchdog of its own: the supervisor passes it WATCHDOG_USEC, the worker's
App pings WATCHDOG=1 from its event loop (as it would to systemd) to the supervisor's notify
socket, and a worker silent for longer than the timeout is killed with SIGKILL; its slot is
restarted like any worker that died. The timeout is the supervisor's own WatchdogSec when
systemd gave one (the shipped unit: 30 s), else WORKER_WATCHDOG. A worker is watched from its
first message (READY=1) on: a slow start is the start's business (the supervisor's start
waits for READY=1 of every worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from policyd.systemd import watchdog_interval

log = logging.getLogger("policyd.workers")

#: A worker's watchdog timeout (s) when systemd gave the supervisor none.
WORKER_WATCHDOG = 30.0


class Watched(Protocol):
    slot: int
    #: when its last notify message arrived (time.monotonic), 0.0 before the first
    pinged: float

    @property
    def pid(self) -> int | None: ...


def notify_messages(sock: socket.socket) -> Iterator[tuple[int | None, bytes]]:
    """The sd_notify datagrams waiting on the supervisor's socket (SO_PASSCRED): (the sender's
    PID, or None without credentials; the message), until none is left."""
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (BlockingIOError, InterruptedError):
            return
        pid = next(
            (
                int(struct.unpack("i", d[:4])[0])
                for level, kind, d in anc
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            ),
            None,
        )
        yield pid, data


def worker_timeout(environ: Mapping[str, str]) -> float:
    """The supervisor's own watchdog timeout (WATCHDOG_USEC from systemd), else 30 s."""
    interval = watchdog_interval(environ)
    return interval * 2 if interval is not None else WORKER_WATCHDOG


def worker_watchdog_env(timeout: float) -> dict[str, str]:
    """What a worker's environment says so that its App pings every timeout / 2."""
    return {"WATCHDOG_USEC": str(max(1, int(timeout * 1_000_000)))}


def kill_hung(
    workers: Sequence[Watched], timeout: float, clock: Callable[[], float] = time.monotonic
) -> list[int]:
    """Kill every worker silent for more than `timeout` s; the PIDs killed."""
    now, killed = clock(), []
    for w in workers:
        pid = w.pid
        if pid is None or not w.pinged or now - w.pinged <= timeout:
            continue
        log.error(
            "worker %d (pid %d) hung: no watchdog ping from its event loop for %.1fs; killed",
            w.slot,
            pid,
            now - w.pinged,
        )
        w.pinged = 0.0  # (once per process: its death restarts the slot)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    return killed


async def watch(workers: Sequence[Watched], timeout: float) -> None:
    """kill_hung every quarter of the timeout, until cancelled."""
    while True:
        await asyncio.sleep(timeout / 4)
        kill_hung(workers, timeout)
