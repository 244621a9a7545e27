"""A private Valkey/Redis server for tests: temp dir, a free port, foreground process.

    with RedisServer(tmp / "redis") as r:     # starts redis-server (or valkey-server)
        r.url                                 # redis://127.0.0.1:PORT/0
        r.kill(); r.start()                   # SIGKILL, then again on the same port (empty)
        r.freeze(); r.thaw()                  # SIGSTOP / SIGCONT: accepted, never answered
    RedisServer(d, bind=(ip1, ip2), wrap=lambda c: net.argv("store", c))  # in a namespace
    RedisServer(d, tls=make_pki(d / "pki"))   # TLS only (tls-port); r.url: rediss://...CA
    RedisServer(d, tls=pki, tls_auth_clients=True)   # clients must show a certificate

The Popen PID is the daemon itself (`--daemonize no`; `ip netns exec` execs it); its log goes to
`<workdir>/redis.log`. No persistence (`--save ''`, no AOF): a restart starts empty, as a
replaced server would. Every started process is killed by PID at interpreter exit, whatever
happened to the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.servers.reaper import reaped_at_exit
from tests.servers.slapd import Pki, free_port

_LIVE = reaped_at_exit(cont=True)


def server_binary() -> str:
    """$POLICYD_TEST_REDIS, else redis-server, else valkey-server (the name when none is
    installed: require_binaries then reports it missing)."""
    wanted = os.environ.get("POLICYD_TEST_REDIS")
    if wanted:
        return shutil.which(wanted) or wanted
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
        if found:
            return found
    return "redis-server"


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        binary: str | None = None,
        *,
        bind: tuple[str, ...] = ("127.0.0.1",),
        wrap: Callable[[list[str]], list[str]] | None = None,
        tls: Pki | None = None,
        tls_auth_clients: bool = False,
    ) -> None:
        """`bind`: its addresses; `wrap`: turns the command into another (Netns.argv, to run
        it in a network namespace; readiness is then read from its log); `tls`: only a TLS
        port, with the PKI's server certificate (SAN 127.0.0.1), `tls_auth_clients`: a client
        certificate signed by its CA required."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or server_binary()
        self.port = free_port()
        self.bind = bind
        self.wrap = wrap
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://{self.bind[0]}:{self.port}/0?ssl_ca_certs={self.tls.ca_cert}"
        return f"redis://{self.bind[0]}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        cmd = [
            self.binary,
            *("--port", str(self.port), "--bind", *self.bind, "--daemonize", "no"),
            *("--dir", str(self.workdir), "--save", "", "--appendonly", "no"),
            # (off only where it must be: another address than loopback, in a namespace)
            *("--protected-mode", "yes" if self.bind == ("127.0.0.1",) else "no"),
        ]
        if self.tls is not None:
            cmd[2] = "0"  # (no plain port at all)
            cmd += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert)]
            cmd += ["--tls-key-file", str(self.tls.server_key)]
            cmd += ["--tls-ca-cert-file", str(self.tls.ca_cert)]
            cmd += ["--tls-auth-clients", "yes" if self.tls_auth_clients else "no"]
        ready_at = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.wrap(cmd) if self.wrap else cmd, stdout=log, stderr=subprocess.STDOUT
            )
        _LIVE[self.proc.pid] = self.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited: {self.log.read_text()[-2000:]}")
            if self._ready(ready_at):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer on {self.bind}:{self.port}")

    def _ready(self, log_from: int) -> bool:
        if self.wrap is not None:
            with open(self.log, "rb") as f:
                f.seek(log_from)
                return b"Ready to accept connections" in f.read()
        try:
            with socket.create_connection((self.bind[0], self.port), timeout=0.5) as s:
                if self.tls is not None and self.tls_auth_clients:
                    # (no certificate to show: the TLS port accepting connections will do)
                    return True
                if self.tls is not None:
                    ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
                    with ctx.wrap_socket(s, server_hostname=self.bind[0]) as t:
                        t.sendall(b"PING\r\n")
                        return t.recv(64).startswith(b"+PONG")
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL by PID: the server is gone at once, its data with it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.wait(timeout=10)
        _LIVE.pop(self.proc.pid, None)
        self.proc = None

    stop = kill

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
