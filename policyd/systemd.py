"""systemd integration without libsystemd: sd_notify, the watchdog, socket activation, and the
stop signals, for every daemon of policyd (policy server, milter, web page).

All three are environment protocols (sd_notify(3), sd_watchdog_enabled(3), sd_listen_fds(3)):

- ``NOTIFY_SOCKET``: a unix datagram socket (a path, or ``@name`` for the abstract namespace)
  that takes newline-separated ``KEY=VALUE`` states such as ``READY=1``.
- ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): with ``WatchdogSec=``, the service must send
  ``WATCHDOG=1`` at least that often; we send every half interval.
- ``LISTEN_FDS``/``LISTEN_FDNAMES``/``LISTEN_PID``: sockets passed in from fd 3 on.

``Notifier`` never raises and never blocks: its socket is non-blocking and a datagram the
manager has no room for (EAGAIN) is dropped. A lost ``WATCHDOG=1`` is re-sent half an interval
later; a lost ``READY=1`` would be a problem, but the manager's queue only fills up when systemd
itself is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Protocol

__all__ = [
    "SD_LISTEN_FDS_START",
    "Lifecycle",
    "Notifier",
    "ShutdownTrigger",
    "StartupError",
    "listen_fds",
    "serve_daemon",
    "until_signalled",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


class StartupError(Exception):
    """A daemon (policy server, milter, web page) cannot start (a missing syslog socket, a
    missing optional package, a port in use). str() is one line for the admin."""


class Notifier:
    """sd_notify(3) in pure Python. Calling it with ``NOTIFY_SOCKET`` unset does nothing."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if raw.startswith("@"):
            self.address = b"\0" + raw[1:].encode()  # abstract namespace
        elif raw.startswith("/"):
            self.address = raw
        elif raw:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract name: ignored", raw)
        self._sock: socket.socket | None = None
        self.sent = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def __call__(self, state: str) -> bool:
        """Send one state ("READY=1", "STATUS=…", several joined by newlines). True if sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            self._sock.sendto(state.encode("utf-8", "replace"), self.address)
        except BlockingIOError:  # the manager's queue is full: drop rather than block the loop
            self.dropped += 1
            return False
        except OSError as e:
            self.dropped += 1
            log.debug("sd_notify %r failed: %s", state.split("\n", 1)[0], e)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def reloading_state() -> str:
    """RELOADING=1 plus the MONOTONIC_USEC systemd ≥ 253 wants with it (older ones ignore it)."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


async def announced_reload(
    lock: asyncio.Lock,
    notify: Callable[[str], object],
    status: Callable[[], str],
    reload: Callable[[], Awaitable[bool]],
) -> bool:
    """One reload at a time, told to systemd: RELOADING=1 before, READY=1 with the status
    after, whether `reload` kept the old config or not (systemd waits for that READY=1)."""
    async with lock:
        notify(reloading_state())
        try:
            return await reload()
        finally:
            notify(f"READY=1\nSTATUS={status()}")


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when the watchdog is
    off, malformed, or meant for another process (WATCHDOG_PID)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def listen_fds(
    unset_environment: bool = True, env: MutableMapping[str, str] | None = None
) -> list[tuple[str, socket.socket]]:
    """Sockets passed by systemd (or systemd-socket-activate) as (name, socket), in fd order.

    Empty unless LISTEN_PID is our pid. Names come from LISTEN_FDNAMES (FileDescriptorName=;
    systemd's default is the socket unit's name), "" when missing. The variables are removed
    (unset_environment) so that child processes do not take the fds for theirs. The sockets
    are made close-on-exec.
    """
    env = os.environ if env is None else env
    try:
        if int(env.get("LISTEN_PID", "0")) != os.getpid():
            return []
        n = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":") if n > 0 else []
    if unset_environment:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
    out: list[tuple[str, socket.socket]] = []
    for i, fd in enumerate(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(n, 0))):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)  # family and type read from the fd
        except OSError as e:
            log.warning("LISTEN_FDS: fd %d is not a usable socket (%s): skipped", fd, e)
            continue
        out.append((names[i] if i < len(names) else "", sock))
    return out


async def watchdog(notify: Callable[[str], object], interval: float) -> None:
    """WATCHDOG=1 every `interval` s from the event loop itself: if the loop is stuck, the
    pings stop (and systemd kills the service). Runs until cancelled."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


#: The signals that stop a daemon (systemctl stop sends SIGTERM; SIGINT for a terminal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def until_signalled(
    stopping: asyncio.Event, also: Mapping[signal.Signals, Callable[[], object]] | None = None
) -> None:
    """The default shutdown trigger of a daemon's serve(): returns when SIGTERM or SIGINT
    sets `stopping` (or anything else does). `also`: more signals and their handlers (the
    policy server's SIGHUP reload). The handlers are removed on return."""
    loop = asyncio.get_running_loop()
    handlers: dict[signal.Signals, Callable[[], object]] = dict.fromkeys(STOP_SIGNALS, stopping.set)
    handlers.update(also or {})
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        await stopping.wait()
    finally:
        for sig in handlers:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


#: Awaited by serve_daemon(); when it returns, the daemon stops.
ShutdownTrigger = Callable[[], Awaitable[object]]


class Lifecycle(Protocol):
    """A daemon's five steps (the policy server's App, the web page's WebApp)."""

    def load(self) -> None:
        """Config, logging, what the daemon serves with. Raises before anything listens."""

    async def start(self) -> None:
        """Listen."""

    def ready(self) -> None:
        """Tell systemd (READY=1)."""

    async def until_signalled(self) -> None:
        """The default shutdown trigger (see the function of that name)."""

    async def stop(self) -> None:
        """Everything start() and load() made, in reverse; safe after a failed start."""


async def serve_daemon(daemon: Lifecycle, shutdown_trigger: ShutdownTrigger | None = None) -> None:
    """load -> start -> ready -> wait -> stop: a daemon's whole life. `shutdown_trigger`
    (tests, embedding) replaces the signals."""
    daemon.load()
    try:
        await daemon.start()
        # The trigger first (until_signalled installs the signal handlers), then READY=1: a
        # SIGHUP sent the moment READY=1 arrives must find its handler, not SIG_DFL (which
        # terminates).
        waiting = asyncio.ensure_future((shutdown_trigger or daemon.until_signalled)())
        try:
            await asyncio.sleep(0)
            daemon.ready()
            await waiting
        finally:
            waiting.cancel()
    finally:
        await daemon.stop()
