"""`policyd serve` as a real subprocess "on" a namespace host, with the LDAP backend.

    p = PolicydProcess(workdir, net, "mta1", servers=["ldap://10.231.2.1", ...], ca_file=...)
    p.start()          # writes policyd.toml, runs `ip netns exec NS python -m policyd serve`
    p.socket           # unix socket path: reachable from the test process (outside the netns)
    p.stop()

The policy socket is a unix socket (Postfix beside policyd talks to it as
`check_policy_service unix:...`): a unix socket is not bound to a network namespace, so the
load generator in the test process reaches every instance while the instance's LDAP traffic
goes through its namespace's links only.

The failover timers of the LDAP backend (policyd/directory/ldap/: `_DOWN_FOR` = 30 s, a
failed server is tried last; `_FAILBACK_AFTER` = 60 s, a connection to a lower server retries
the first) are module constants, not config keys. So that a test run shows failover AND
failback within seconds, the process is started through a small launcher that sets them
(FAILOVER_TIMERS) before running policyd's own `main()`; nothing else is changed. The launcher
refuses to run if the constants are not found (after a refactor: update FAILOVER_MODULES).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.servers.netns import Netns
from tests.servers.reaper import reaped_at_exit
from tests.servers.slapd import BIND_DN, BIND_PASSWORD, REPO

#: Shortened failover timers for the test (production: 30 s and 60 s).
FAILOVER_TIMERS: Mapping[str, float] = {"_DOWN_FOR": 2.0, "_FAILBACK_AFTER": 3.0}
#: Where to look for them: this module or package and all its submodules.
FAILOVER_MODULES = ("policyd.directory.ldap",)

LAUNCHER = """
import importlib, json, pkgutil, sys
timers, mods = json.loads(sys.argv.pop(1)), json.loads(sys.argv.pop(1))
found = set()
for name in mods:
    m = importlib.import_module(name)
    subs = [m] + [importlib.import_module(i.name) for i in
                  pkgutil.walk_packages(getattr(m, "__path__", []), name + ".")]
    for sub in subs:
        for k, v in timers.items():
            if hasattr(sub, k):
                setattr(sub, k, v); found.add(k)
if found != set(timers):
    sys.exit(f"launcher: {sorted(set(timers) - found)} not found in {mods}")
from policyd.cli import main
sys.argv[0] = "policyd"
sys.exit(main())
"""

_LIVE = reaped_at_exit()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m policyd ARGS` from the repository, its output as text (30 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "policyd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def toml_value(v: object) -> str:
    return json.dumps(v)  # strings, numbers, booleans and lists of them: TOML == JSON here


class PolicydProcess:
    def __init__(
        self,
        workdir: Path,
        net: Netns,
        host: str,
        *,
        servers: Sequence[str],
        ca_file: Path,
        sock_dir: Path,
        positive_ttl: float = 2.0,
        negative_ttl: float = 2.0,
        stale_if_error: float = 120.0,
        lookup_deadline: float = 2.0,
        timeout: int = 1,
        threads: int = 4,
        user_attributes: Sequence[str] = ("mail", "mailLocalAddress"),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.net = net
        self.host = host
        self.servers = list(servers)
        self.socket = str(Path(sock_dir) / f"{host}-policy.sock")
        self.log = self.workdir / "policyd.log"
        self.config = self.workdir / "policyd.toml"
        self.positive_ttl = positive_ttl
        self.stale_if_error = stale_if_error
        self.lookup_deadline = lookup_deadline
        pw = self.workdir / "bind-password"
        pw.write_text(BIND_PASSWORD + "\n")
        pw.chmod(0o600)
        self.toml = "\n".join(
            [
                "[server]",
                f"listen = {toml_value(['unix:' + self.socket])}",
                'unix_socket_mode = "0600"',
                "[logging]",
                'level = "warning"',
                'target = "stderr"',
                "[networks]",
                "files = []",
                "[directory]",
                'backend = "ldap"',
                f"lookup_deadline = {lookup_deadline}",
                f"threads = {threads}",
                "[cache]",
                "enabled = true",
                f"positive_ttl = {positive_ttl}",
                f"negative_ttl = {negative_ttl}",
                "max_entries = 100000",
                f"stale_if_error = {stale_if_error}",
                "[ldap]",
                f"servers = {toml_value(self.servers)}",
                "start_tls = true",
                "tls_validate = true",
                f"ca_file = {toml_value(str(ca_file))}",
                f"bind_dn = {toml_value(BIND_DN)}",
                f"bind_password_file = {toml_value(str(pw))}",
                f"connect_timeout = {timeout}",
                f"receive_timeout = {timeout}",
                f"user_attributes = {toml_value(list(user_attributes))}",
                'user_base = "ou=people,dc=example,dc=org"',
                'user_scope = "one"',
                'group_base = "ou=groups,dc=example,dc=org"',
                'group_scope = "one"',
                "[profiles.submission]",
                'role = "submission"',
                "ports = [587]",
            ]
        )
        self.config.write_text(self.toml + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def senders_config(self, database: Path, writer_dn: str, writer_password: str) -> Path:
        """A config for `policyd senders` on this host: the same directory settings, plus
        sender verification with the "ldap" store and the writer bind."""
        pw = self.workdir / "writer-password"
        pw.write_text(writer_password + "\n")
        pw.chmod(0o600)
        path = self.workdir / "senders.toml"
        path.write_text(
            "\n".join(
                [
                    self.toml,
                    "[verification]",
                    "enabled = true",
                    'store = "ldap"',
                    f"database = {toml_value(str(database))}",
                    'local_domains = ["example.org", "example.net"]',
                    "[verification.ldap]",
                    f"writer_bind_dn = {toml_value(writer_dn)}",
                    f"writer_password_file = {toml_value(str(pw))}",
                ]
            )
            + "\n"
        )
        return path

    def senders(self, config: Path, *args: str, timeout: float = 30.0) -> tuple[int, Any, str]:
        """`policyd senders --json ARGS` run on this host: (exit status, JSON answer, stderr)."""
        p = subprocess.run(
            self.net.argv(
                self.host,
                [sys.executable, "-m", "policyd", "senders", "--config", str(config), "--json"]
                + list(args),
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        try:
            answer = json.loads(p.stdout) if p.stdout.strip() else None
        except ValueError:
            answer = p.stdout
        return p.returncode, answer, p.stderr

    def start(self, timeout: float = 20.0) -> PolicydProcess:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [
            sys.executable,
            "-c",
            LAUNCHER,
            json.dumps(dict(FAILOVER_TIMERS)),
            json.dumps(list(FAILOVER_MODULES)),
            "serve",
            "--config",
            str(self.config),
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.net.argv(self.host, cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        _LIVE[self.proc.pid] = self.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                _LIVE.pop(self.proc.pid, None)
                raise RuntimeError(f"policyd on {self.host} exited: {self.log_text()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.socket)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"policyd on {self.host} did not listen: {self.log_text()}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        _LIVE.pop(p.pid, None)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
