"""Running the policy server: config, runtime, listeners, signals, reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from policyd.config import Config, ConfigError, load_config
from policyd.directory.base import DirectoryError
from policyd.networks import NetworksError
from policyd.runtime import Runtime, build_runtime
from policyd.server import PolicyServer
from policyd.service import PolicyService

log = logging.getLogger(__name__)

#: What a bad config / range file / directory file raises at load time.
LOAD_ERRORS = (ConfigError, NetworksError, DirectoryError)


class App:
    """One running policyd: the server plus what reload needs to rebuild it."""

    def __init__(self, config_path: Path, config: Config, runtime: Runtime) -> None:
        self.config_path = config_path
        self.config = config
        self.service = PolicyService(runtime)
        self.server = PolicyServer(self.service, config.server)
        self.stopping = asyncio.Event()
        self.reloads = 0
        self.reload_failures = 0
        #: called with "READY=1"-style state changes (sd_notify is plugged in here)
        self.notify: Callable[[str], None] = lambda _msg: None

    async def reload(self) -> bool:
        """Re-read config, ranges and directory; validate first; swap atomically.

        In-flight requests keep the runtime they started with. An invalid new config is
        logged and the old one stays.
        """
        self.notify("RELOADING=1")
        loop = asyncio.get_running_loop()
        try:
            try:
                config = await loop.run_in_executor(None, load_config, self.config_path)
                runtime = await loop.run_in_executor(None, build_runtime, config)
            except LOAD_ERRORS as e:
                self.reload_failures += 1
                log.error("reload failed, keeping the running config: %s", e)
                return False
            old = self.service.runtime
            if config.server.listen != self.config.server.listen:
                log.warning("reload: server.listen changed; listeners change only on restart")
            keep_cache = (
                old.lookups is not None
                and runtime.lookups is not None
                and old.config.ldap == config.ldap
                and old.config.addresses == config.addresses
            )
            if keep_cache and old.lookups is not None and runtime.lookups is not None:
                # same directory: keep the warm cache (entries, not the pool)
                runtime.lookups._entries = old.lookups._entries
            self.service.runtime = runtime
            self.config = config
            self.reloads += 1
            log.info(
                "reloaded %s: %s; directory %s%s",
                self.config_path, runtime.networks.summary(), config.directory.backend,
                "" if keep_cache else " (cache dropped)",
            )
            # the old pool may still serve in-flight lookups: close it once they are done
            loop.call_later(config.directory.lookup_deadline + 1, old.close)
            return True
        finally:
            self.notify("READY=1")


def load(config_path: Path) -> tuple[Config, Runtime]:
    config = load_config(config_path)
    return config, build_runtime(config)


async def serve(
    app: App,
    listen: Sequence[str],
    sockets: Sequence[socket.socket] = (),
    install_signals: bool = True,
) -> None:
    """Run until SIGTERM/SIGINT (or app.stopping is set); SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    await app.server.start(listen, sockets)
    rt = app.service.runtime
    log.info(
        "policyd listening on %s; %s; directory %s; profiles %s",
        ", ".join(app.server.addresses), rt.networks.summary(), app.config.directory.backend,
        ", ".join(app.config.profiles),
    )
    if install_signals:
        loop.add_signal_handler(signal.SIGTERM, app.stopping.set)
        loop.add_signal_handler(signal.SIGINT, app.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(app.reload()))
    app.notify("READY=1")
    try:
        await app.stopping.wait()
    finally:
        app.notify("STOPPING=1")
        log.info("stopping: draining %d request(s) in flight", app.server.in_flight)
        await app.server.stop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
        app.service.runtime.close()
        log.info("stopped")
