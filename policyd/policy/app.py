"""The life of `policyd serve`, in one place, top to bottom:

    load   config -> logging -> metrics -> runtime (ranges, directory, lookups)
    start  listeners (server.listen, --listen, or the sockets systemd passed) -> metrics endpoint
    ready  READY=1 to systemd, the watchdog pings
    wait   until the shutdown trigger fires (default: SIGTERM/SIGINT; SIGHUP reloads meanwhile)
    stop   in reverse: drain the server, stop the watchdog and metrics, close the runtimes

`App.serve()` runs exactly that; tests and embedders pass their own `shutdown_trigger` (as
hypercorn's `worker_serve`). One object holds the running config: the runtime (`app.runtime`,
with `.config`); a reload builds a new one and swaps it in. `serve_stdio()` answers one
connection on stdin/stdout (Postfix spawn(8)) with the same service and the same reply path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from policyd.config import Config, ConfigError, load_config
from policyd.decision_log import setup_logging
from policyd.directory.base import DirectoryError
from policyd.directory.cache import CachedLookups
from policyd.networks import NetworksError
from policyd.policy.server import DecisionHook, PolicyServer
from policyd.policy.service import PolicyService
from policyd.runtime import Runtime, build_runtime
from policyd.systemd import (
    Notifier,
    ShutdownTrigger,
    StartupError,
    announced_reload,
    listen_fds,
    serve_daemon,
    until_signalled,
    watchdog,
    watchdog_interval,
)

if TYPE_CHECKING:
    from policyd.policy.metrics import Metrics

log = logging.getLogger("policyd.app")  # (not __name__: the name admins grep)

#: What a bad config / range file / directory file raises at load time.
LOAD_ERRORS = (ConfigError, NetworksError, DirectoryError)
_Loaded = TypeVar("_Loaded")


async def load_or_keep(
    load_new: Callable[[], _Loaded], logger: logging.Logger, keeping: str
) -> _Loaded | None:
    """`load_new()` in a thread, or None when it fails: a reload never stops the service.
    The error is logged once, as "reload failed, <keeping>: <why>"."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, load_new)
    except LOAD_ERRORS as e:
        logger.error("reload failed, %s: %s", keeping, e)
    except Exception as e:  # a bug or an unexpected library error: still keep serving
        logger.exception("reload failed, %s: %s", keeping, e)
    return None


class App:
    """One running policyd: its lifecycle, and the reload that swaps its runtime."""

    def __init__(
        self,
        config_path: Path,
        *,
        listen: Sequence[str] | None = None,
        sockets: Sequence[socket.socket] | None = None,
        environ: MutableMapping[str, str] | None = None,
        configure_logging: bool = True,
        hooks: Iterable[DecisionHook] = (),
        runtime_factory: Callable[[Config], Runtime] | None = None,
        config_loader: Callable[[Path], Config] = load_config,
    ) -> None:
        self.config_path = Path(config_path)
        #: --listen: instead of server.listen (socket-activated sockets win over both)
        self.listen_override = list(listen) if listen else None
        #: listening sockets to serve; None: the ones systemd passed (LISTEN_FDS), if any
        self.sockets = sockets
        self.config_loader = config_loader
        self.environ: MutableMapping[str, str] = os.environ if environ is None else environ
        self.configure_logging = configure_logging
        self.hooks = list(hooks)
        #: builds a Runtime from a Config (default build_runtime; tests pass their own)
        self.runtime_factory = runtime_factory
        #: sd_notify (does nothing outside systemd)
        self.notify: Callable[[str], object] = Notifier(self.environ)
        self.stopping = asyncio.Event()
        self.reloads = 0
        self.reload_failures = 0
        #: time.time() of the last successful (re)load: a metric, and in STATUS=
        self.loaded_at = 0.0
        #: False when the listeners did not come from server.listen (--listen, socket
        #: activation): then a changed server.listen is not worth a warning on reload.
        self.listen_from_config = True
        self.metrics: Metrics | None = None
        self.service: PolicyService | None = None
        self._server: PolicyServer | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        #: replaced runtimes, closed once their in-flight lookups are done (or at stop)
        self._retired: list[Runtime] = []

    # -- the whole life ------------------------------------------------------------------------

    async def serve(self, shutdown_trigger: ShutdownTrigger | None = None) -> None:
        """load -> start -> ready -> wait -> stop. Raises LOAD_ERRORS or StartupError before
        anything listens."""
        await serve_daemon(self, shutdown_trigger)

    # -- load ------------------------------------------------------------------------------------

    def load(self) -> None:
        """Config, logging, metrics, runtime. Raises LOAD_ERRORS / StartupError."""
        try:
            config = self.config_loader(self.config_path)
        except ConfigError as e:
            self.notify(f"STATUS=config error: {e}")
            raise
        if self.configure_logging:
            start_logging(config, self.config_path)
        if config.metrics.enabled:
            self.metrics = _make_metrics(self.config_path)
        try:
            runtime = self._build(config)
        except LOAD_ERRORS as e:
            self.notify(f"STATUS=config error: {e}")
            raise
        self.service = PolicyService(runtime)
        hooks = list(self.hooks)
        if self.metrics is not None:
            hooks.append(self.metrics.on_decision)
            self.metrics.bind(self)
            self.metrics.attach(runtime)
        self._server = PolicyServer(self.service, hooks=hooks)
        self.loaded_at = time.time()

    # -- start / ready ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listeners (or the sockets systemd passed), then the metrics endpoint."""
        how = "socket activation"
        if self.sockets is None:
            passed = listen_fds(env=self.environ)  # (also unsets LISTEN_*: no child takes them)
        else:
            passed, how = [("", sock) for sock in self.sockets], "inherited"
        sockets = [sock for _, sock in passed]
        listen = self.listen_override or list(self.config.server.listen)
        if sockets:
            names = ", ".join(name or "?" for name, _ in passed)
            log.info(
                "%s: serving %d passed socket(s) (%s); %s ignored",
                how,
                len(sockets),
                names,
                "--listen" if self.listen_override else "server.listen",
            )
            listen = []
        self.listen_from_config = not (self.listen_override or sockets)
        try:
            await self.server.start(listen, sockets)
        except OSError as e:  # (names the address: the CLI prints it as it is)
            self.notify(f"STATUS={e}")
            raise
        if self.metrics is not None:
            where = self.metrics.start(self.config.metrics.listen)
            log.info("metrics on http://%s/metrics", where)
        log.info(
            "policyd listening on %s; %s; directory %s; profiles %s",
            ", ".join(self.server.addresses),
            self.runtime.networks.summary(),
            self.config.directory.backend,
            ", ".join(self.config.profiles),
        )

    def ready(self) -> None:
        """Tell systemd we serve; start the watchdog pings when WatchdogSec= asks for them."""
        self.notify(f"READY=1\nSTATUS={self.status()}\nMAINPID={os.getpid()}")
        interval = watchdog_interval(self.environ)
        if interval is not None:
            self._watchdog = asyncio.ensure_future(watchdog(self.notify, interval))
            log.info("systemd watchdog: WATCHDOG=1 every %.3gs", interval)

    # -- wait ------------------------------------------------------------------------------------

    async def until_signalled(self) -> None:
        """The default shutdown trigger: SIGTERM/SIGINT stop, SIGHUP reloads."""
        await until_signalled(self.stopping, {signal.SIGHUP: self.request_reload})

    # -- stop ------------------------------------------------------------------------------------

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Everything start() and load() made, in reverse. Safe to call after a failed start.
        `drain_timeout`: instead of server.drain_timeout."""
        self.stopping.set()
        if self._server is not None:
            self.notify(f"STOPPING=1\nSTATUS=draining {self.server.in_flight} request(s)")
            log.info("stopping: draining %d request(s) in flight", self.server.in_flight)
            await self.server.stop(drain_timeout)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self.metrics is not None:
            self.metrics.stop()
        if self.service is not None:
            await self.service.quotas.close()
        self.close()
        log.info("stopped")

    def close(self) -> None:
        """Close the runtime and every retired one."""
        for rt in list(self._retired):
            self._close_retired(rt)
        if self.service is not None:
            self.service.runtime.close()

    # -- what is running ---------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """The running runtime (config, ranges, lookups): the one object a reload swaps."""
        if self.service is None:
            raise RuntimeError("App.load() has not run")
        return self.service.runtime

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def server(self) -> PolicyServer:
        if self._server is None:
            raise RuntimeError("App.load() has not run")
        return self._server

    def _build(self, config: Config) -> Runtime:
        return (self.runtime_factory or build_runtime)(config)

    def status(self) -> str:
        """One line for systemd's STATUS= (shown by systemctl status)."""
        where = ", ".join(self.server.addresses) or "-"
        return (
            f"listening on {where}; {self.runtime.networks.summary()}; "
            f"directory {self.config.directory.backend}"
        )

    # -- reload ----------------------------------------------------------------------------------

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
        return await announced_reload(self._reload_lock, self.notify, self.status, self._reload)

    async def _reload(self) -> bool:
        def load_new() -> tuple[Config, Runtime]:
            config = self.config_loader(self.config_path)
            return config, self._build(config)

        loaded = await load_or_keep(load_new, log, "keeping the running config")
        if loaded is None:
            self.reload_failures += 1
            return False
        config, runtime = loaded
        old = self.runtime
        _warn_restart_only_changes(old.config, config, self.listen_from_config)
        if config.logging.level != old.config.logging.level:
            logging.getLogger().setLevel(config.logging.level.upper())
        cache_note = ""
        # (the directory's cache, also under the verified senders' wrapper)
        old_cache = getattr(old.lookups, "inner", old.lookups)
        new_cache = getattr(runtime.lookups, "inner", runtime.lookups)
        if isinstance(old_cache, CachedLookups) and isinstance(new_cache, CachedLookups):
            same = old.config.ldap == config.ldap and old.config.addresses == config.addresses
            new_cache.take_over(old_cache, keep_entries=same)
            cache_note = "; cache kept" if same else "; directory changed: cache dropped"
        if self.metrics is not None:
            self.metrics.attach(runtime)
        assert self.service is not None
        self.service.runtime = runtime  # the swap: limits, drain_timeout, rules apply at once
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
        asyncio.get_running_loop().call_later(grace, self._close_retired, old)
        return True

    def _close_retired(self, runtime: Runtime) -> None:
        for i, rt in enumerate(self._retired):
            if rt is runtime:  # (identity: Runtime is a dataclass with value equality)
                del self._retired[i]
                with contextlib.suppress(Exception):
                    runtime.close()
                return


def load(config_path: Path, *, read_secrets: bool = True) -> tuple[Config, Runtime]:
    """Config and runtime, for the one-shot commands (check, config-check; config-check without
    --connect reads no password: read_secrets=False)."""
    config = load_config(config_path)
    return config, build_runtime(config, read_secrets=read_secrets)


def start_logging(config: Config, config_path: Path) -> None:
    """The configured log target and level. Raises StartupError for a missing syslog socket."""
    lc = config.logging
    if lc.target == "syslog" and lc.syslog_address.startswith("/"):
        if not os.path.exists(lc.syslog_address):
            raise StartupError(
                f'{config_path}: logging.target = "syslog", but {lc.syslog_address} does not exist'
            )
    setup_logging(lc.level, lc.target, lc.syslog_address, lc.syslog_facility)


def _warn_restart_only_changes(old: Config, new: Config, listen_from_config: bool) -> None:
    if listen_from_config and new.server.listen != old.server.listen:
        log.warning(
            "reload: server.listen changed (%s -> %s); listeners change only on restart",
            ", ".join(old.server.listen),
            ", ".join(new.server.listen),
        )
    if new.logging.target != old.logging.target or (
        new.logging.target == "syslog"
        and (new.logging.syslog_address, new.logging.syslog_facility)
        != (old.logging.syslog_address, old.logging.syslog_facility)
    ):
        log.warning("reload: logging target changed; it takes effect on restart")
    if new.metrics != old.metrics:
        log.warning("reload: [metrics] changed; it takes effect on restart")
    if new.server.workers != old.server.workers:
        log.warning("reload: server.workers changed; it takes effect on restart")


def _make_metrics(config_path: Path) -> Metrics:
    try:
        from policyd.policy.metrics import Metrics
    except ImportError as e:
        if not (e.name or "").startswith("prometheus_client"):
            raise
        raise StartupError(
            f"{config_path}: metrics.enabled = true needs prometheus-client: "
            "apt install python3-prometheus-client, or pip install '.[metrics]' in policyd's "
            "source tree (or set metrics.enabled = false)"
        ) from None
    return Metrics()
