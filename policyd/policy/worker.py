"""One worker process of `policyd serve` with server.workers > 1 (policy/workers.py starts
them): the ordinary App (policy/app.py) on the listening sockets it inherited, which also stops
when its supervisor is gone."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import MutableMapping
from pathlib import Path

from policyd.policy.app import App
from policyd.systemd import STOP_SIGNALS

log = logging.getLogger("policyd.workers")

#: What the supervisor passes: the inherited listening sockets (fd numbers, comma-separated),
#: the worker's slot (1..N, for the log), the read end of the lifeline pipe.
ENV_FDS, ENV_SLOT, ENV_LIFELINE = "POLICYD_WORKER_FDS", "POLICYD_WORKER", "POLICYD_WORKER_LIFELINE"


class WorkerApp(App):
    """One worker: the App on the inherited sockets; stops when the supervisor is gone."""

    def __init__(self, config_path: Path, environ: MutableMapping[str, str]) -> None:
        fds = [int(fd) for fd in environ.pop(ENV_FDS).split(",") if fd]
        self.lifeline = int(environ.pop(ENV_LIFELINE))
        self.slot = environ.pop(ENV_SLOT, "?")
        # until the loop's handlers are in place, a reload signal must not kill us
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        super().__init__(config_path, sockets=[socket.socket(fileno=fd) for fd in fds])

    async def until_signalled(self) -> None:
        """As App's, but the handlers stay while stop() drains (the supervisor and systemd
        may both send SIGTERM: the second must not kill a draining worker)."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_reader(self.lifeline, self._supervisor_gone)
        await self.stopping.wait()

    def _supervisor_gone(self) -> None:
        asyncio.get_running_loop().remove_reader(self.lifeline)
        log.error("worker %s: the supervisor is gone; stopping", self.slot)
        self.stopping.set()
