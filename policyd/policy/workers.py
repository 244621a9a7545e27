"""`policyd serve` with server.workers > 1: one supervisor process and N worker processes on
the same listening sockets, with one reload and one stop for all. Its life, top to bottom:

    load   config, checked the way one process checks it (ranges, directory) -> logging
    start  the listeners, bound once here (server.listen, --listen, or the sockets systemd
           passed) -> N workers inherit them -> wait until each one says READY=1
    ready  READY=1 to systemd, the watchdog pings
    wait   SIGTERM/SIGINT stop; SIGHUP checks the new config once and, only if it is valid,
           makes every worker reload; a worker that dies is logged and restarted (backoff),
           a worker that hangs is killed, so restarted (policy/worker_watch.py)
    stop   close our copies of the listeners, SIGTERM every worker (each drains its in-flight
           requests as one process does), wait for them; unlink the unix sockets bound here

A worker is `python -m policyd serve` run by the supervisor: an ordinary App (policy/app.py)
serving the sockets it inherited (WorkerApp). What passes between them:

- POLICYD_WORKER_FDS: the inherited listening sockets (fd numbers); POLICYD_WORKER: its slot.
- NOTIFY_SOCKET: the supervisor's own datagram socket, so a worker's READY=1 reaches the
  supervisor (which knows the sender by SO_PASSCRED), not systemd.
- POLICYD_WORKER_LIFELINE: the read end of a pipe whose write end only the supervisor holds:
  if the supervisor dies (even SIGKILL), every worker reads EOF and stops: no orphans.

The directory cache and LDAP pool are fine per process; metrics and in-memory quota counters
are not: config/workers.py refuses them with workers > 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, MutableMapping, Sequence
from pathlib import Path

from policyd.config import Config, ConfigError, load_config
from policyd.config.workers import resolve_workers
from policyd.policy.app import LOAD_ERRORS, App, load, load_or_keep, start_logging
from policyd.policy.server import bind_listener
from policyd.policy.worker import ENV_FDS, ENV_LIFELINE, ENV_SLOT, WorkerApp
from policyd.policy.worker_watch import (
    notify_messages,
    watch,
    worker_timeout,
    worker_watchdog_env,
)
from policyd.systemd import (
    STOP_SIGNALS,
    Notifier,
    StartupError,
    announced_reload,
    listen_fds,
    serve_daemon,
    watchdog,
    watchdog_interval,
)

log = logging.getLogger("policyd.workers")

#: Restart delays after a worker died: doubling from the first, at most the last; a worker
#: that served for STABLE seconds starts the count again.
BACKOFF, MAX_BACKOFF, STABLE = 1.0, 30.0, 60.0
#: A worker: `policyd serve --config PATH` (it knows it is one by POLICYD_WORKER_FDS).
WORKER_COMMAND = (sys.executable, "-m", "policyd", "serve", "--config")
#: How long a reload waits for the workers' READY=1 before saying so (and READY=1 anyway).
RELOAD_WAIT = 120.0


def make_daemon(
    config_path: Path, listen: Sequence[str] | None, environ: MutableMapping[str, str]
) -> App | Supervisor:
    """What `policyd serve` runs: a worker (started by a supervisor), a supervisor
    (server.workers > 1), or the one process of today (server.workers = 1)."""
    if ENV_FDS in environ:
        return WorkerApp(config_path, environ)
    try:
        workers = resolve_workers(load_config(config_path).server.workers)
    except ConfigError:
        workers = 1  # (App.load reports it, to systemd's STATUS= too)
    if workers > 1:
        return Supervisor(config_path, workers, listen=listen, environ=environ)
    return App(config_path, listen=listen, environ=environ)


class Worker:
    """One slot: its current process, and whether it has said READY=1 since its last
    (re)start or reload."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        #: the config generation this process was started with, or last told to reload to
        self.generation = 0
        #: when its last notify message came (time.monotonic), 0.0 before the first
        self.pinged = 0.0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.returncode is not None else self.proc.pid


class Supervisor:
    """N workers on one set of listeners; one reload and one stop for all of them."""

    def __init__(
        self,
        config_path: Path,
        workers: int,
        *,
        listen: Sequence[str] | None = None,
        environ: MutableMapping[str, str] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.listen_override = list(listen) if listen else None
        self.environ: MutableMapping[str, str] = os.environ if environ is None else environ
        self.notify = Notifier(self.environ)
        self.workers = [Worker(slot) for slot in range(1, workers + 1)]
        self.stopping = asyncio.Event()
        self.config = Config()
        #: bumped by every reload that passed the check
        self.generation = 0
        self.reloads = self.reload_failures = 0
        self.sockets: list[socket.socket] = []
        self.addresses: list[str] = []
        self._unix_paths: list[str] = []
        self._inbox: socket.socket | None = None  # the workers' NOTIFY_SOCKET
        self._inbox_name = f"@policyd-workers-{os.getpid()}-{secrets.token_hex(8)}"
        #: the lifeline pipe (read end, write end): the workers watch for its EOF
        self._lifeline = (-1, -1)
        self._tasks: list[asyncio.Task[object]] = []
        self._watchdog: asyncio.Task[None] | None = None
        #: the workers' own watchdog (a hung one is killed) and its timeout
        self._watch: asyncio.Task[None] | None = None
        self.worker_timeout = worker_timeout(self.environ)
        self._reload_lock = asyncio.Lock()
        #: set when a worker ends before all served for the first time: the start fails
        self._start_failed = asyncio.Event()
        self._failed_start = ""
        self._started = False

    # -- the whole life ------------------------------------------------------------------------

    async def serve(self) -> None:
        """load -> start -> ready -> wait -> stop (as App.serve)."""
        await serve_daemon(self)

    def load(self) -> None:
        """The config, checked whole (ranges, directory) as one process checks it; logging."""
        try:
            config, runtime = load(self.config_path)
        except LOAD_ERRORS as e:
            self.notify(f"STATUS=config error: {e}")
            raise
        runtime.close()  # (the workers build their own)
        start_logging(config, self.config_path)
        self.config = config

    async def start(self) -> None:
        """Bind the listeners once, start every worker, wait until each one serves."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._bind()
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self._inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._inbox.bind(b"\0" + self._inbox_name[1:].encode())
        loop.add_reader(self._inbox.fileno(), self._read_inbox)
        self._lifeline = os.pipe()
        self._tasks = [asyncio.ensure_future(self._keep(w)) for w in self.workers]
        self._watch = asyncio.ensure_future(watch(self.workers, self.worker_timeout))
        await _first(
            asyncio.gather(*(w.ready.wait() for w in self.workers)),
            self._start_failed.wait(),
            self.stopping.wait(),
        )
        if self._start_failed.is_set():
            raise StartupError(self._failed_start)
        self._started = True
        log.info(
            "policyd listening on %s with %d worker processes (pids %s)",
            ", ".join(self.addresses),
            len(self.workers),
            " ".join(str(w.pid) for w in self.workers),
        )

    def ready(self) -> None:
        if self.stopping.is_set():  # (SIGTERM while the workers started)
            return
        self.notify(f"READY=1\nSTATUS={self.status()}\nMAINPID={os.getpid()}")
        interval = watchdog_interval(self.environ)
        if interval is not None:
            self._watchdog = asyncio.ensure_future(watchdog(self.notify, interval))

    async def until_signalled(self) -> None:
        """Until SIGTERM/SIGINT (the handlers, set by start(), stay while stop() waits for the
        workers: a second SIGTERM must not kill the supervisor and orphan them)."""
        await self.stopping.wait()

    async def stop(self) -> None:
        """Every worker drains and exits; then the listeners are gone."""
        self.stopping.set()
        self.notify("STOPPING=1\nSTATUS=stopping the workers")
        for sock in self.sockets:  # (the workers' copies close as they stop accepting)
            sock.close()
        for w in self.workers:
            if w.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)
        grace = self.config.server.drain_timeout + 10.0
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            for w in self.workers:
                if late and w.pid is not None:
                    log.error(
                        "worker %d (pid %d) still running after %gs: killed", w.slot, w.pid, grace
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
            if late:
                await asyncio.wait(late, timeout=5.0)
        for task in (self._watchdog, self._watch):
            if task is not None:
                task.cancel()
        if self._inbox is not None:
            asyncio.get_running_loop().remove_reader(self._inbox.fileno())
            self._inbox.close()
        for fd in self._lifeline:
            if fd >= 0:
                os.close(fd)
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        log.info("stopped")

    def status(self) -> str:
        live = sum(1 for w in self.workers if w.pid is not None)
        return f"{live} of {len(self.workers)} workers on {', '.join(self.addresses) or '-'}"

    # -- the listeners -----------------------------------------------------------------------

    def _bind(self) -> None:
        """server.listen (or --listen), bound here once; or the sockets systemd passed."""
        passed = listen_fds(env=self.environ)
        if passed:
            log.info(
                "socket activation: %d passed socket(s) (%s) for every worker; %s ignored",
                len(passed),
                ", ".join(name or "?" for name, _ in passed),
                "--listen" if self.listen_override else "server.listen",
            )
            self.sockets = [sock for _, sock in passed]
        else:
            server = self.config.server
            for spec in self.listen_override or server.listen:
                self.sockets += bind_listener(spec, server.unix_socket_mode, self._unix_paths)
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                host = f"[{name[0]}]" if ":" in name[0] else name[0]
                self.addresses.append(f"{host}:{name[1]}")
            else:
                self.addresses.append(f"unix:{name!s}")

    # -- the workers ---------------------------------------------------------------------------

    async def _keep(self, w: Worker) -> None:
        """Run slot `w` until stop: start its process; when it dies, log and restart it."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.stopping.is_set():
            w.ready.clear()
            w.exited.clear()
            w.generation = self.generation
            w.pinged = 0.0
            started, pid = loop.time(), "-"
            try:
                w.proc = await asyncio.create_subprocess_exec(
                    *WORKER_COMMAND,
                    str(self.config_path),
                    env=self._worker_env(w),
                    pass_fds=[s.fileno() for s in self.sockets] + [self._lifeline[0]],
                    stdin=asyncio.subprocess.DEVNULL,
                )
                pid, rc = str(w.proc.pid), await w.proc.wait()
                why = f"exit status {rc}" if rc >= 0 else f"signal {signal.Signals(-rc).name}"
            except OSError as e:  # (no process at all: out of processes, files or memory)
                why = f"cannot start: {e}"
            w.exited.set()
            if self.stopping.is_set():
                return
            if not self._started:  # (a config or setup problem: no point in restarting)
                self._failed_start = f"worker {w.slot} ended ({why}) before it served; see its log"
                self._start_failed.set()
                return
            failures = 1 if loop.time() - started >= STABLE else failures + 1
            delay = min(MAX_BACKOFF, BACKOFF * 2 ** (failures - 1))
            log.error(
                "worker %d (pid %s) ended unexpectedly (%s); restarting it in %gs",
                w.slot,
                pid,
                why,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _worker_env(self, w: Worker) -> dict[str, str]:
        env = {k: v for k, v in self.environ.items() if not k.startswith(_NOT_FOR_WORKERS)}
        env[ENV_FDS] = ",".join(str(s.fileno()) for s in self.sockets)
        env[ENV_LIFELINE] = str(self._lifeline[0])
        env[ENV_SLOT] = str(w.slot)
        env["NOTIFY_SOCKET"] = self._inbox_name
        env.update(worker_watchdog_env(self.worker_timeout))
        return env

    def _read_inbox(self) -> None:
        """The workers' sd_notify datagrams: READY=1 marks the sender ready; any (WATCHDOG=1)
        says its event loop runs."""
        assert self._inbox is not None
        by_pid: dict[int | None, Worker] = {w.pid: w for w in self.workers if w.pid}
        for pid, data in notify_messages(self._inbox):
            w = by_pid.get(pid)
            if w is None:
                continue
            w.pinged = time.monotonic()
            if b"READY=1" not in data.split(b"\n"):
                continue
            w.ready.set()
            if w.generation < self.generation and w.pid is not None:
                w.generation = self.generation  # (started before the last reload's check)
                w.ready.clear()
                os.kill(w.pid, signal.SIGHUP)

    # -- reload --------------------------------------------------------------------------------

    def request_reload(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._tasks.append(task)  # (kept referenced; stop() waits for it too)

    async def reload(self) -> bool:
        """Check the new config once; only if it is valid, every worker reloads (SIGHUP) and
        this returns when each has said READY=1 again. A bad config changes nothing."""
        if self.stopping.is_set():
            return False
        return await announced_reload(self._reload_lock, self.notify, self.status, self._reload)

    async def _reload(self) -> bool:
        def check_new() -> Config:
            config, runtime = load(self.config_path)
            runtime.close()
            return config

        config = await load_or_keep(check_new, log, "every worker keeps the running config")
        if config is None:
            self.reload_failures += 1
            return False
        if config.logging.level != self.config.logging.level:
            logging.getLogger().setLevel(config.logging.level.upper())
        self.config = config
        self.generation += 1
        waiting = []
        for w in self.workers:
            if w.pid is not None and w.ready.is_set():
                w.generation = self.generation
                w.ready.clear()
                os.kill(w.pid, signal.SIGHUP)
                waiting.append(w)
            # (a worker not serving yet reloads when it says READY=1: see _read_inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(_first(w.ready.wait(), w.exited.wait()) for w in waiting)),
                RELOAD_WAIT,
            )
        if any(not w.ready.is_set() for w in waiting):
            log.warning("reload: a worker did not say READY=1 again within %gs", RELOAD_WAIT)
        self.reloads += 1
        log.info("reloaded %s in %d worker(s)", self.config_path, len(waiting))
        return True


#: The supervisor's business with systemd, which its workers must not take for theirs.
_NOT_FOR_WORKERS = ("LISTEN_", "WATCHDOG_", "NOTIFY_SOCKET", "POLICYD_WORKER")


async def _first(*aws: Awaitable[object]) -> None:
    """Until the first of `aws` is done (the others are cancelled)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
