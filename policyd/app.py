"""Running the policy server: config, runtime, listeners, signals, reload, systemd, stdio.

`serve()` runs the daemon: it binds (or adopts socket-activated) listeners, starts the metrics
endpoint, tells systemd READY=1, pings the watchdog from the event loop, reloads on SIGHUP and
drains on SIGTERM/SIGINT. `serve_stdio()` answers one connection on stdin/stdout (Postfix
spawn(8)).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyd.config import Config, ConfigError, load_config
from policyd.decision import Decision, Reason, Verdict
from policyd.directory.base import DirectoryError
from policyd.directory.cache import CachedLookups
from policyd.engine import to_action
from policyd.networks import NetworksError
from policyd.protocol import ProtocolError, RequestParser, encode_action
from policyd.runtime import Runtime, build_runtime
from policyd.server import DecisionHook, PolicyServer
from policyd.service import PolicyService
from policyd.systemd import reloading_state

if TYPE_CHECKING:
    from policyd.metrics import Metrics

log = logging.getLogger(__name__)

#: What a bad config / range file / directory file raises at load time.
LOAD_ERRORS = (ConfigError, NetworksError, DirectoryError)

_INTERNAL_ERROR = Decision(
    Verdict.DEFER,
    Reason.DIRECTORY_UNAVAILABLE,
    "451 4.3.0 Temporary policy failure, please try again later",
)


class App:
    """One running policyd: the server plus what reload needs to rebuild it."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        runtime: Runtime,
        hooks: Iterable[DecisionHook] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.service = PolicyService(runtime)
        self.metrics = metrics
        all_hooks = list(hooks)
        if metrics is not None:
            all_hooks.append(metrics.on_decision)
            metrics.bind(self)
        self.server = PolicyServer(self.service, config.server, hooks=all_hooks)
        self.stopping = asyncio.Event()
        self.reloads = 0
        self.reload_failures = 0
        #: time.time() of the last successful (re)load: a metric, and in STATUS=
        self.loaded_at = time.time()
        #: False when the listeners did not come from server.listen (--listen, socket
        #: activation): then a changed server.listen is not worth a warning on reload.
        self.listen_from_config = True
        #: called with "READY=1"-style state changes (sd_notify is plugged in here)
        self.notify: Callable[[str], object] = lambda _msg: None
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        #: replaced runtimes, closed once their in-flight lookups are done (or at stop)
        self._retired: list[Runtime] = []
        self._adopt(runtime)

    def _adopt(self, runtime: Runtime) -> None:
        if self.metrics is not None:
            self.metrics.attach(runtime)

    def request_reload(self) -> None:
        """Start a reload from a signal handler (the task is kept referenced until done)."""
        self._spawn(self.reload())

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read config, ranges and directory; validate first; swap atomically.

        In-flight requests keep the runtime they started with. An invalid new config is
        logged and the old one stays. Reloads are serialised (two quick SIGHUPs give two
        reloads, in order). Changes to server.listen, logging.target and [metrics] need a
        restart (logged); the other server limits and the log level apply at once.
        """
        if self.stopping.is_set():
            log.info("reload requested while stopping: ignored")
            return False
        async with self._reload_lock:
            self.notify(reloading_state())
            try:
                return await self._reload()
            finally:
                self.notify(f"READY=1\nSTATUS={self.status()}")

    async def _reload(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, load_config, self.config_path)
            runtime = await loop.run_in_executor(None, build_runtime, config)
        except LOAD_ERRORS as e:
            self.reload_failures += 1
            log.error("reload failed, keeping the running config: %s", e)
            return False
        except Exception as e:  # a bug or an unexpected library error: still keep serving
            self.reload_failures += 1
            log.exception("reload failed, keeping the running config: %s", e)
            return False
        old = self.service.runtime
        old_cfg = self.config
        if self.listen_from_config and config.server.listen != old_cfg.server.listen:
            log.warning(
                "reload: server.listen changed (%s -> %s); listeners change only on restart",
                ", ".join(old_cfg.server.listen),
                ", ".join(config.server.listen),
            )
        if config.logging.target != old_cfg.logging.target or (
            config.logging.target == "syslog"
            and (config.logging.syslog_address, config.logging.syslog_facility)
            != (old_cfg.logging.syslog_address, old_cfg.logging.syslog_facility)
        ):
            log.warning("reload: logging target changed; it takes effect on restart")
        if config.metrics != old_cfg.metrics:
            log.warning("reload: [metrics] changed; it takes effect on restart")
        if config.logging.level != old_cfg.logging.level:
            logging.getLogger().setLevel(config.logging.level.upper())
        cache_note = ""
        if isinstance(old.lookups, CachedLookups) and isinstance(runtime.lookups, CachedLookups):
            same = old.config.ldap == config.ldap and old.config.addresses == config.addresses
            runtime.lookups.take_over(old.lookups, keep_entries=same)
            cache_note = "; cache kept" if same else "; directory changed: cache dropped"
        self._adopt(runtime)
        self.service.runtime = runtime
        self.server.config = config.server  # limits and drain_timeout apply at once
        self.config = config
        self.reloads += 1
        self.loaded_at = time.time()
        log.info(
            "reloaded %s: %s; directory %s%s",
            self.config_path,
            runtime.networks.summary(),
            config.directory.backend,
            cache_note,
        )
        # the old pool may still serve in-flight lookups: close it once they are done
        self._retired.append(old)
        grace = max(old.config.directory.lookup_deadline, config.directory.lookup_deadline) + 1
        loop.call_later(grace, self._close_retired, old)
        return True

    def _close_retired(self, runtime: Runtime) -> None:
        for i, rt in enumerate(self._retired):
            if rt is runtime:  # (identity: Runtime is a dataclass with value equality)
                del self._retired[i]
                with contextlib.suppress(Exception):
                    runtime.close()
                return

    def close(self) -> None:
        """Close the runtime and every retired one."""
        for rt in list(self._retired):
            self._close_retired(rt)
        self.service.runtime.close()

    def status(self) -> str:
        """One line for systemd's STATUS= (shown by systemctl status)."""
        rt = self.service.runtime
        where = ", ".join(self.server.addresses) or "-"
        return f"listening on {where}; {rt.networks.summary()}; directory {self.config.directory.backend}"


def load(config_path: Path) -> tuple[Config, Runtime]:
    config = load_config(config_path)
    return config, build_runtime(config)


async def _watchdog(notify: Callable[[str], object], interval: float) -> None:
    """WATCHDOG=1 from the event loop itself: if the loop is stuck, the pings stop."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def serve(
    app: App,
    listen: Sequence[str],
    sockets: Sequence[socket.socket] = (),
    install_signals: bool = True,
    watchdog: float | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or app.stopping is set); SIGHUP reloads.

    `sockets` are socket-activated listeners (server.listen is then ignored by the caller).
    `watchdog` is the WATCHDOG=1 interval in seconds (systemd WatchdogSec=/2), or None.
    """
    loop = asyncio.get_running_loop()
    await app.server.start(listen, sockets)
    wd: asyncio.Task[None] | None = None
    try:
        if app.metrics is not None:
            where = app.metrics.start(app.config.metrics.listen)
            log.info("metrics on http://%s/metrics", where)
        rt = app.service.runtime
        log.info(
            "policyd listening on %s; %s; directory %s; profiles %s",
            ", ".join(app.server.addresses),
            rt.networks.summary(),
            app.config.directory.backend,
            ", ".join(app.config.profiles),
        )
        if install_signals:
            loop.add_signal_handler(signal.SIGTERM, app.stopping.set)
            loop.add_signal_handler(signal.SIGINT, app.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, app.request_reload)
        app.notify(f"READY=1\nSTATUS={app.status()}\nMAINPID={os.getpid()}")
        if watchdog is not None:
            wd = asyncio.ensure_future(_watchdog(app.notify, watchdog))
            log.info("systemd watchdog: WATCHDOG=1 every %.3gs", watchdog)
        await app.stopping.wait()
        app.notify(f"STOPPING=1\nSTATUS=draining {app.server.in_flight} request(s)")
        log.info("stopping: draining %d request(s) in flight", app.server.in_flight)
    finally:
        await app.server.stop()
        if wd is not None:
            wd.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wd
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
        if app.metrics is not None:
            app.metrics.stop()
        app.close()
        log.info("stopped")


# --------------------------------------------------------------------------------------------
# --stdio: one connection on stdin/stdout (Postfix spawn(8))


async def serve_stdio(app: App, rfd: int = 0, wfd: int = 1) -> None:
    """Answer the requests on one connection until EOF.

    A socket (what spawn(8) passes) is served by the same connection code as the daemon;
    anything else (a pipe, a terminal, a file) by a plain blocking read loop over the same
    parser and service. Every reply is written with os.write, so nothing sits in a buffer.
    The caller keeps logs away from stdout/stderr: under spawn(8) both are the Postfix socket.
    """
    if stat.S_ISSOCK(os.fstat(rfd).st_mode):
        await _stdio_socket(app, rfd)
    else:
        await _stdio_stream(app, rfd, wfd)


async def _stdio_socket(app: App, fd: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=os.dup(fd))
    await loop.connect_accepted_socket(app.server._factory, sock)
    while app.server.connections:  # the one connection; it leaves the set on close
        await asyncio.sleep(0.02)


async def _stdio_stream(app: App, rfd: int, wfd: int) -> None:
    parser = RequestParser()
    while True:
        data = os.read(rfd, 65536)  # blocking on purpose: one client, strictly serial
        if not data:
            if parser.pending:
                log.info("stdin closed in the middle of a request")
            return
        try:
            requests = parser.feed(data)
        except ProtocolError as e:
            log.warning("closing stdin connection: %s (nothing answered)", e)
            return
        for req in requests:
            started = time.perf_counter()
            try:
                profile, decision = await app.service.decide(req.attrs)
                pname = profile.name
            except Exception:  # a bug must defer, never permit, never kill the server
                log.exception("internal error deciding a request on stdin")
                pname, decision = "-", _INTERNAL_ERROR
            try:
                payload = encode_action(to_action(decision))
            except ValueError:
                log.error(
                    "refusing to send invalid action %r; deferring instead", to_action(decision)
                )
                payload = encode_action(_INTERNAL_ERROR.reply)
            _write_all(wfd, payload)
            app.server.emit(req.attrs, pname, decision, time.perf_counter() - started)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
