"""Operating policyd: systemd units, socket activation, sd_notify, --stdio, reload and stop
under load, metrics.

Most tests drive `python -m policyd serve` as a subprocess, the way systemd (or Postfix's
spawn(8)) runs it, with a config, range file and directory file generated in tmp_path.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from policyd.policy.protocol import encode_request
from tests.servers.requirements import require_binaries

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

SENDERS = "alice: alice@example.org\nbob: bob@example.org\n"
RANGES_A = "192.0.2.0/24 customers\n"
RANGES_B = "198.51.100.0/24 others\n"
CLIENT = "192.0.2.7"  # in RANGES_A, not in RANGES_B
OK = "OK"
DENY = (
    "554 5.7.1 Relay access denied: 192.0.2.7 is not in our network; "
    "enable SMTP authentication in your mail client"
)


def request(client: str = CLIENT, **extra: str) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": client,
        "client_name": "unknown",
        "sasl_username": "",
        "sender": "someone@example.com",
        "recipient": "rcpt@example.net",
        "policy_context": "submission",
        **extra,
    }


REQ = encode_request(request())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """For unix socket paths (108-byte limit; tmp_path can be long)."""
    with tempfile.TemporaryDirectory(prefix="pd-", dir="/tmp") as d:
        yield Path(d)


def write_config(
    d: Path,
    *,
    ranges: str = RANGES_A,
    listen: str = "127.0.0.1:1",
    metrics_listen: str | None = None,
    level: str = "info",
    drain_timeout: float = 5.0,
) -> Path:
    (d / "senders.txt").write_text(SENDERS)
    replace_file(d / "ranges.txt", ranges)
    metrics = (
        f'enabled = true\nlisten = "{metrics_listen}"' if metrics_listen else "enabled = false"
    )
    cfg = d / "policyd.toml"
    replace_file(
        cfg,
        f"""
[server]
listen = ["{listen}"]
drain_timeout = {drain_timeout}

[logging]
level = "{level}"

[metrics]
{metrics}

[networks]
files = ["ranges.txt"]

[directory]
backend = "file"
file = "senders.txt"
""",
    )
    return cfg


def replace_file(path: Path, text: str) -> None:
    """Atomically, as an admin's editor or config management would (no half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Client:
    """One policy connection (TCP or unix), strict request/reply like Postfix."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 5.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""

    def ask(self, attrs: dict[str, str] | None = None) -> str | None:
        """The action, or None when the server closed the connection cleanly before any byte
        of a reply."""
        self.sock.sendall(REQ if attrs is None else encode_request(attrs))
        return self.reply()

    def reply(self) -> str | None:
        while b"\n\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                if self.buf:
                    raise AssertionError(
                        f"connection closed in the middle of a reply: {self.buf!r}"
                    )
                return None
            self.buf += data
        raw, self.buf = self.buf.split(b"\n\n", 1)
        text = raw.decode()
        assert text.startswith("action="), text
        return text[len("action=") :]

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """`python -m policyd serve ...` as a child; stderr (the log) goes to a file."""

    def __init__(
        self,
        args: list[str],
        tmp: Path,
        env: dict[str, str] | None = None,
        argv0: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.log_path = tmp / f"policyd-{uuid.uuid4().hex[:6]}.log"
        self.out_path = self.log_path.with_suffix(".out")
        self._err = open(self.log_path, "wb")  # noqa: SIM115
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self.terminated = False
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [*(argv0 or [PY, "-m", "policyd"]), *args],
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            pass_fds=pass_fds,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} (x{count}) not logged; log:\n{self.log()}")

    def wait_port(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"policyd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"policyd not listening on {port}; log:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.terminated |= sig == signal.SIGTERM
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (unless already sent: a second one during the final teardown, after the
        handlers are gone, would kill it) and the exit status."""
        if self.proc.poll() is None and not self.terminated:
            self.signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"policyd did not stop on SIGTERM; log:\n{self.log()}") from None
        self._err.close()
        self._out.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._err.close()
        self._out.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


def start(
    daemons: list[Daemon],
    tmp: Path,
    cfg: Path,
    port: int,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Daemon:
    d = Daemon(
        ["serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}", *extra], tmp, env=env
    )
    daemons.append(d)
    d.wait_port(port)
    return d


# --------------------------------------------------------------------------------------------
# The unit files


#: Every unit file in systemd/ (the test below fails when one is added and not listed here).
UNITS = ("policyd.service", "policyd.socket", "policyd-milter.service", "policyd-web.service")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target", ".mount")


def _systemd_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    return int(out.split()[1]) if out.startswith("systemd ") else 0


def test_systemd_units_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the shipped units, in a throwaway root holding what they
    reference (/usr/local/bin/policyd, the system units), so it runs here; any warning fails
    the test, not only errors. Also the exposure score of the hardening.

    The units need systemd >= 253 (Type=notify-reload). An older systemd-analyze (Debian 12's
    252) gets a copy with Type=notify, the only setting it does not know; the units as they
    are go through systemd 257 in the Python 3.13 tier (scripts/test-py313) and in the booted
    trixie container (tests/debian)."""
    require_binaries("systemd-analyze", why="unit file verification")
    root = tmp_path / "root"
    sys_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    assert sys_units is not None, "no system unit directory"
    shutil.copytree(sys_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/local/bin").mkdir(parents=True)
    fake = root / "usr/local/bin/policyd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    shipped = [p.name for p in (REPO / "systemd").iterdir() if p.suffix in UNIT_SUFFIXES]
    assert sorted(shipped) == sorted(UNITS)
    old_systemd = _systemd_version() < 253
    for unit in UNITS:
        text = (REPO / "systemd" / unit).read_text()
        if old_systemd:
            text = text.replace("\nType=notify-reload\n", "\nType=notify\n")
        (etc / unit).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    )
    for service in (u for u in UNITS if u.endswith(".service")):
        sec = subprocess.run(
            [
                "systemd-analyze",
                "security",
                "--offline=yes",
                f"--root={root}",
                "--threshold=25",
                "--no-pager",
                service,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sec.returncode == 0, f"{service}: exposure over 2.5:\n{sec.stdout}\n{sec.stderr}"


# --------------------------------------------------------------------------------------------
# Socket activation


def _check_socket_activated(d: Daemon, port: int, unix_path: str, ignored_port: int) -> None:
    for _ in range(3):
        c = Client(("127.0.0.1", port))
        assert c.ask() == OK
        c.close()
    u = Client(unix_path)
    assert u.ask() == OK
    assert u.ask(request(client="203.0.113.1")) == DENY.replace(CLIENT, "203.0.113.1")
    u.close()
    d.wait_log("socket activation: serving 2 passed socket(s) (tcp, unix); server.listen ignored")
    with pytest.raises(OSError):  # server.listen was not bound
        socket.create_connection(("127.0.0.1", ignored_port), timeout=0.5).close()


def test_socket_activation_with_systemd_socket_activate(
    tmp_path: Path, short_dir: Path, daemons: list[Daemon]
) -> None:
    require_binaries("systemd-socket-activate", why="socket activation")
    port, ignored = free_port(), free_port()
    unix_path = str(short_dir / "policy.sock")
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{ignored}")
    d = Daemon(
        [
            "-l",
            f"127.0.0.1:{port}",
            "-l",
            unix_path,
            "--fdname=tcp:unix",
            "-E",
            "PATH",
            "-E",
            "PYTHONPATH",
            "-E",
            "LANG",
            PY,
            "-m",
            "policyd",
            "serve",
            "--config",
            str(cfg),
        ],
        tmp_path,
        argv0=["systemd-socket-activate"],
    )
    daemons.append(d)
    d.wait_log("Listening on")
    _check_socket_activated(d, port, unix_path, ignored)
    assert d.stop() == 0
    assert "Execing" in d.log() or "socket activation" in d.log()


_LAUNCHER = r"""
import os, socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", port)); tcp.listen(128)
uds = socket.socket(socket.AF_UNIX); uds.bind(path); uds.listen(128)
os.dup2(tcp.fileno(), 20); os.dup2(uds.fileno(), 21)
tcp.close(); uds.close()
os.dup2(20, 3); os.dup2(21, 4); os.close(20); os.close(21)
os.set_inheritable(3, True); os.set_inheritable(4, True)
env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="tcp:unix", LISTEN_PID=str(os.getpid()))
os.execve(sys.executable, [sys.executable, "-m", "policyd", *sys.argv[3:]], env)
"""


def test_socket_activation_by_hand(tmp_path: Path, short_dir: Path, daemons: list[Daemon]) -> None:
    """The LISTEN_* protocol itself, set up by a tiny launcher (no systemd tools needed)."""
    port, ignored = free_port(), free_port()
    unix_path = str(short_dir / "policy.sock")
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{ignored}")
    d = Daemon(
        [str(port), unix_path, "serve", "--config", str(cfg)],
        tmp_path,
        argv0=[PY, "-c", _LAUNCHER],
    )
    daemons.append(d)
    d.wait_log("policyd listening on")
    _check_socket_activated(d, port, unix_path, ignored)
    assert d.stop() == 0
    assert os.path.exists(unix_path), "a passed unix socket belongs to systemd: never unlinked"


# --------------------------------------------------------------------------------------------
# sd_notify


def test_sd_notify_ready_watchdog_reload_stopping(tmp_path: Path, daemons: list[Daemon]) -> None:
    name = f"policyd-test-{uuid.uuid4().hex}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(b"\0" + name.encode())  # an abstract NOTIFY_SOCKET, as systemd ≥ 254 passes

    def messages(until: Callable[[str], bool], timeout: float = 10.0) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([rx], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            msg = rx.recv(4096).decode()
            got.append(msg)
            if until(msg):
                return got
        raise AssertionError(f"no matching message; got {got}")

    port = free_port()
    cfg = write_config(tmp_path)
    d = Daemon(
        ["serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
        tmp_path,
        env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"},
    )
    daemons.append(d)
    first = messages(lambda m: m.startswith("READY=1"))
    # READY=1 comes only once the listener is bound and the config is loaded
    c = Client(("127.0.0.1", port))
    assert c.ask() == OK
    c.close()
    assert not any(m.startswith("READY=1") for m in first[:-1])
    ready = first[-1].split("\n")
    assert f"MAINPID={d.proc.pid}" in ready
    assert any(line.startswith("STATUS=listening on 127.0.0.1:") for line in ready)

    started = time.monotonic()
    pings = [m for m in messages(lambda m: time.monotonic() - started > 0.7) if m == "WATCHDOG=1"]
    assert len(pings) >= 4, pings  # every 0.1 s (WATCHDOG_USEC/2)

    d.signal(signal.SIGHUP)
    got = [m for m in messages(lambda m: m.startswith("READY=1")) if m != "WATCHDOG=1"]
    assert got[0].startswith("RELOADING=1\nMONOTONIC_USEC="), got
    assert got[-1].startswith("READY=1"), got

    d.signal(signal.SIGTERM)
    got = [m for m in messages(lambda m: m.startswith("STOPPING=1")) if m != "WATCHDOG=1"]
    assert got[-1].startswith("STOPPING=1")
    assert d.stop() == 0
    rx.close()


def test_watchdog_pings_stop_while_the_event_loop_is_stuck(tmp_path: Path) -> None:
    """WATCHDOG=1 is sent by the event loop itself: a blocked loop sends none, so systemd's
    watchdog restarts a hung policyd."""
    from policyd.policy.app import App

    cfg = write_config(tmp_path)
    sent: list[tuple[float, str]] = []

    async def main() -> None:
        app = App(
            cfg,
            listen=["127.0.0.1:0"],
            environ={"WATCHDOG_USEC": "40000"},  # a ping every 0.02 s
            configure_logging=False,
        )
        app.notify = lambda msg: sent.append((time.monotonic(), msg))
        task = asyncio.ensure_future(app.serve(shutdown_trigger=app.stopping.wait))
        await asyncio.sleep(0.2)
        time.sleep(0.4)  # the loop is stuck
        await asyncio.sleep(0.2)
        app.stopping.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    pings = [t for t, m in sent if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 10
    assert max(gaps) >= 0.35  # the stuck loop sent nothing
    assert sorted(gaps)[len(gaps) // 2] < 0.1  # otherwise every interval
    assert sent[0][1].startswith("READY=1") and sent[-1][1].startswith("STOPPING=1")


# --------------------------------------------------------------------------------------------
# --stdio (Postfix spawn(8))


def _read_exactly_replies(fd: int, n: int, timeout: float = 10.0) -> list[str]:
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n\n") < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no reply within {timeout}s (unflushed?); got {buf!r}"
        data = os.read(fd, 65536)
        assert data, f"EOF after {buf!r}"
        buf += data
    parts = buf.split(b"\n\n")
    assert parts[-1] == b"", f"more than replies on stdout: {buf!r}"
    return [p.decode() for p in parts[:-1]]


def test_stdio_through_a_pipe(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, level="debug")  # debug: as much logging as possible
    p = subprocess.Popen(
        [PY, "-m", "policyd", "serve", "--stdio", "--config", str(cfg)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    try:
        fd = p.stdout.fileno()
        # one request at a time: each reply must arrive at once (flushed), not at EOF
        p.stdin.write(REQ)
        p.stdin.flush()
        assert _read_exactly_replies(fd, 1) == [f"action={OK}"]
        # a warning-worthy request (unknown policy_context is logged) and two in one write
        batch = (
            encode_request(request(policy_context="no-such-profile"))
            + encode_request(request(client="203.0.113.1"))
            + REQ
        )
        p.stdin.write(batch)
        p.stdin.flush()
        assert _read_exactly_replies(fd, 3) == [
            f"action={OK}",
            "action=" + DENY.replace(CLIENT, "203.0.113.1"),
            f"action={OK}",
        ]
        p.stdin.close()  # EOF: policyd exits
        assert p.wait(10) == 0
        assert p.stdout.read() == b""  # nothing but the replies
        assert p.stderr.read() == b""  # no log line: under spawn(8) stderr is the socket too
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_stdio_on_a_socket_like_spawn(tmp_path: Path) -> None:
    """spawn(8) connects stdin, stdout and stderr to one socket."""
    cfg = write_config(tmp_path, level="debug")
    ours, theirs = socket.socketpair()
    p = subprocess.Popen(
        [PY, "-m", "policyd", "serve", "--stdio", "--config", str(cfg)],
        cwd=REPO,
        stdin=theirs.fileno(),
        stdout=theirs.fileno(),
        stderr=theirs.fileno(),
    )
    theirs.close()
    try:
        ours.settimeout(10)
        c = Client.__new__(Client)
        c.sock, c.buf = ours, b""
        assert c.ask() == OK
        assert c.ask(request(policy_context="no-such-profile")) == OK
        assert c.ask(request(client="203.0.113.1")) == DENY.replace(CLIENT, "203.0.113.1")
        ours.shutdown(socket.SHUT_WR)  # EOF
        assert p.wait(10) == 0
        rest = b""
        while data := ours.recv(65536):
            rest += data
        assert rest == b"" and c.buf == b"", f"more than replies on the socket: {c.buf + rest!r}"
    finally:
        ours.close()
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_stdio_bad_config_writes_nothing_to_the_stream(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[server\n")
    r = subprocess.run(
        [PY, "-m", "policyd", "serve", "--stdio", "--config", str(cfg)],
        cwd=REPO,
        input=REQ,
        capture_output=True,
        timeout=20,
    )
    assert r.returncode == 1
    assert r.stdout == b"" and r.stderr == b""


# --------------------------------------------------------------------------------------------
# Reload and stop under load


@dataclass
class LoadResult:
    replies: list[str] = field(default_factory=list)
    closed_cleanly: bool = False
    error: BaseException | None = None


def _hammer(port: int, until: float, out: LoadResult, started: threading.Barrier) -> None:
    try:
        c = Client(("127.0.0.1", port), timeout=10)
        started.wait(10)
        while time.monotonic() < until:
            r = c.ask()
            if r is None:
                out.closed_cleanly = True
                break
            out.replies.append(r)
        c.close()
    except BaseException as e:  # recorded, asserted by the test
        out.error = e


def _load(
    port: int, seconds: float, n: int = 20
) -> tuple[list[LoadResult], list[threading.Thread], threading.Barrier]:
    until = time.monotonic() + seconds
    barrier = threading.Barrier(n + 1)
    results = [LoadResult() for _ in range(n)]
    threads = [
        threading.Thread(target=_hammer, args=(port, until, r, barrier), daemon=True)
        for r in results
    ]
    for t in threads:
        t.start()
    barrier.wait(10)
    return results, threads, barrier


def test_sighup_under_load_switches_ranges_and_loses_nothing(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    port = free_port()
    cfg = write_config(tmp_path)
    d = start(daemons, tmp_path, cfg, port)
    results, threads, _ = _load(port, seconds=2.0)
    time.sleep(0.6)
    replace_file(tmp_path / "ranges.txt", RANGES_B)
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded ")
    for t in threads:
        t.join(15)
    for i, r in enumerate(results):
        assert r.error is None, f"connection {i}: {r.error!r}"
        assert not r.closed_cleanly, f"connection {i} was closed by a reload"
        assert set(r.replies) <= {OK, DENY}, set(r.replies)
        assert r.replies[0] == OK and r.replies[-1] == DENY, (i, r.replies[0], r.replies[-1])
        switch = r.replies.index(DENY)
        assert OK not in r.replies[switch:], f"connection {i}: old ranges after the new ones"
    total = sum(len(r.replies) for r in results)
    assert total > 20 * 10, total
    assert "1 range (1 IPv4" in d.log()

    # an invalid config on reload: logged, the running one kept
    cfg_text = cfg.read_text()
    replace_file(cfg, cfg_text + "\n[server]\nlisten = 5\n")
    d.signal(signal.SIGHUP)
    d.wait_log("reload failed, keeping the running config")
    replace_file(cfg, cfg_text)
    replace_file(tmp_path / "ranges.txt", "10.1.2.3/8 host-bits-set\n")  # an invalid range file
    d.signal(signal.SIGHUP)
    d.wait_log("reload failed, keeping the running config", count=2)
    assert "ranges.txt:1" in d.log()
    c = Client(("127.0.0.1", port))
    assert c.ask() == DENY  # still RANGES_B
    c.close()
    assert d.proc.poll() is None
    assert d.stop() == 0


def _not_owned(sender: str, login: str) -> str:
    return f"553 5.7.1 Sender address <{sender}> is not owned by user {login}"


def test_sighup_after_editing_the_senders_file_changes_ownership_on_an_open_connection(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    port = free_port()
    cfg = write_config(tmp_path)  # SENDERS: alice owns alice@, bob owns bob@
    d = start(daemons, tmp_path, cfg, port)
    c = Client(("127.0.0.1", port))

    def as_user(login: str, sender: str) -> str | None:
        return c.ask(request(sasl_username=login, sender=sender))

    assert as_user("alice", "alice@example.org") == OK
    assert as_user("alice", "bob@example.org") == _not_owned("bob@example.org", "alice")
    assert as_user("bob", "bob@example.org") == OK

    # The admin moves bob@ to alice and alice@ to carol; only the directory file changes.
    replace_file(
        tmp_path / "senders.txt",
        "alice: bob@example.org\ncarol: alice@example.org\n",
    )
    # Not yet re-read: the running directory still answers, on the same connection.
    assert as_user("alice", "bob@example.org") == _not_owned("bob@example.org", "alice")
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded ")

    # The same connection (no reconnect): the new ownership, in both directions.
    assert as_user("alice", "bob@example.org") == OK
    assert as_user("alice", "alice@example.org") == _not_owned("alice@example.org", "alice")
    assert as_user("bob", "bob@example.org") == _not_owned("bob@example.org", "bob")
    assert as_user("carol", "alice@example.org") == OK
    c.close()
    assert d.log().count("reloaded ") == 1
    assert "reload failed" not in d.log()
    assert d.stop() == 0


def test_sigterm_under_load_drains_without_resets(tmp_path: Path, daemons: list[Daemon]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, drain_timeout=5.0)
    d = start(daemons, tmp_path, cfg, port)
    # one client is in the middle of a request when SIGTERM arrives
    half = Client(("127.0.0.1", port))
    assert half.ask() == OK
    half.sock.sendall(REQ[:40])
    results, threads, _ = _load(port, seconds=3.0)
    time.sleep(0.5)
    stopped_at = time.monotonic()
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    half.sock.sendall(REQ[40:])
    assert half.reply() == OK  # the request in flight is answered ...
    assert half.reply() is None  # ... then the connection ends cleanly
    half.close()
    for t in threads:
        t.join(15)
    rc = d.proc.wait(15)
    assert rc == 0, d.log()
    assert time.monotonic() - stopped_at < 5.0
    for i, r in enumerate(results):
        # every request sent got its whole reply, or met a clean end of stream (no reset)
        assert r.error is None, f"connection {i}: {r.error!r}"
        assert r.closed_cleanly, f"connection {i} still open after the stop"
        assert set(r.replies) == {OK}
    log = d.log()
    assert "stopping: draining" in log and "stopped" in log
    assert "drain timeout" not in log
    d.stop()


# --------------------------------------------------------------------------------------------
# Metrics


def _scrape(port: int) -> dict[str, list[Any]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(fams: dict[str, list[Any]], sample: str, **labels: str) -> float:
    for fam in fams.values():
        for s in fam:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {sample}{labels}")


def test_metrics_endpoint_counts_decisions(tmp_path: Path, daemons: list[Daemon]) -> None:
    pytest.importorskip("prometheus_client")
    port, mport = free_port(), free_port()
    cfg = write_config(tmp_path, metrics_listen=f"127.0.0.1:{mport}")
    d = start(daemons, tmp_path, cfg, port)
    d.wait_log(f"metrics on http://127.0.0.1:{mport}/metrics")
    fams = _scrape(mport)
    assert _value(fams, "policyd_request_duration_seconds_count") == 0
    assert _value(fams, "policyd_ranges_loaded") == 1
    assert _value(fams, "policyd_reloads_total") == 0

    c = Client(("127.0.0.1", port))
    for _ in range(3):
        assert c.ask() == OK
    for _ in range(2):
        assert c.ask(request(client="203.0.113.1")) is not None
    fams = _scrape(mport)
    labels = {"profile": "submission"}
    assert (
        _value(
            fams, "policyd_decisions_total", verdict="accept", reason="allocated_network", **labels
        )
        == 3
    )
    assert (
        _value(
            fams,
            "policyd_decisions_total",
            verdict="reject",
            reason="authentication_required",
            **labels,
        )
        == 2
    )
    assert _value(fams, "policyd_request_duration_seconds_count") == 5
    assert _value(fams, "policyd_connections_open") == 1
    assert _value(fams, "policyd_requests_in_flight") == 0
    for name in (
        "policyd_directory_cache_hits_total",
        "policyd_directory_cache_misses_total",
        "policyd_directory_cache_stale_answers_total",
        "policyd_directory_lookup_errors_total",
        "policyd_connections_refused_total",
        "policyd_reload_failures_total",
    ):
        assert _value(fams, name) == 0, name
    assert "policyd_directory_lookup_duration_seconds" in fams
    assert _value(fams, "process_resident_memory_bytes") > 0
    c.close()

    replace_file(tmp_path / "ranges.txt", RANGES_A + RANGES_B)
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded ")
    replace_file(cfg, "broken = [")
    d.signal(signal.SIGHUP)
    d.wait_log("reload failed")
    fams = _scrape(mport)
    assert _value(fams, "policyd_reloads_total") == 1
    assert _value(fams, "policyd_reload_failures_total") == 1
    assert _value(fams, "policyd_ranges_loaded") == 2
    assert _value(fams, "policyd_connections_open") == 0
    assert d.stop() == 0


def test_metrics_need_prometheus_client_only_when_enabled(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "prometheus_client.py").write_text(
        "raise ModuleNotFoundError(\n"
        "    \"No module named 'prometheus_client'\", name='prometheus_client'\n"
        ")\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    cfg = write_config(tmp_path, metrics_listen=f"127.0.0.1:{free_port()}")
    r = subprocess.run(
        [
            PY,
            "-m",
            "policyd",
            "serve",
            "--config",
            str(cfg),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 1
    assert "metrics.enabled = true needs prometheus-client" in r.stderr
    assert "Traceback" not in r.stderr
    # disabled: the package is never imported, so policyd runs without it
    cfg = write_config(tmp_path)
    port = free_port()
    d = start(daemons, tmp_path, cfg, port, env=env)
    c = Client(("127.0.0.1", port))
    assert c.ask() == OK
    c.close()
    assert d.stop() == 0


def test_metrics_lookup_latency_and_errors_from_the_cache_layer() -> None:
    """Directory calls are timed through LookupRunner.observer; cache counters are read at
    scrape time (no per-request cost)."""
    pytest.importorskip("prometheus_client")
    from policyd.config import CacheConfig, Config
    from policyd.directory.base import DirectoryUnavailable
    from policyd.directory.cache import CachedLookups, LookupRunner
    from policyd.networks import Networks
    from policyd.policy.metrics import Metrics
    from policyd.runtime import Runtime

    class SlowDirectory:
        blocking = True

        def addresses_of(self, login: str) -> frozenset[str]:
            time.sleep(0.01)
            if login == "down":
                raise DirectoryUnavailable("down")
            return frozenset({f"{login}@example.org"})

        def owners_of(self, address: str) -> frozenset[str]:
            return frozenset()

        def identity_of(self, login: str) -> frozenset[str]:
            return frozenset({f"login={login}"})

        def close(self) -> None:
            pass

    config = Config()
    runner = LookupRunner(SlowDirectory(), threads=2, deadline=1.0)
    lookups = CachedLookups(runner, CacheConfig())
    rt = Runtime(config, Networks.empty(), config.addresses.rules(), runner.directory, lookups)
    m = Metrics()
    m.attach(rt)

    async def go() -> None:
        await lookups.addresses_of("alice")
        await lookups.addresses_of("alice")  # cached: no directory call
        with pytest.raises(DirectoryUnavailable):
            await lookups.addresses_of("down")

    asyncio.run(go())
    runner.close()
    ok = m.registry.get_sample_value(
        "policyd_directory_lookup_duration_seconds_count", {"result": "ok"}
    )
    err = m.registry.get_sample_value(
        "policyd_directory_lookup_duration_seconds_count", {"result": "error"}
    )
    assert (ok, err) == (1.0, 1.0)
    total = m.registry.get_sample_value(
        "policyd_directory_lookup_duration_seconds_sum", {"result": "ok"}
    )
    assert total is not None and total >= 0.009


# --------------------------------------------------------------------------------------------
# App.reload in-process


def test_reload_is_serialised_notifies_and_applies_limits(tmp_path: Path) -> None:
    from policyd.policy.app import App

    cfg = write_config(tmp_path)
    sent: list[str] = []

    async def main() -> None:
        app = App(cfg, configure_logging=False)
        app.load()
        app.notify = lambda msg: sent.append(msg.split("\n", 1)[0])
        replace_file(
            cfg,
            cfg.read_text().replace(
                "drain_timeout = 5.0", "drain_timeout = 7.5\nmax_connections = 7"
            ),
        )
        assert list(await asyncio.gather(app.reload(), app.reload())) == [True, True]
        assert sent == ["RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]
        assert app.server.config.max_connections == 7 and app.server.config.drain_timeout == 7.5
        assert app.reloads == 2
        app.close()

    asyncio.run(main())


def test_reload_survives_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import policyd.policy.app as app_mod

    cfg = write_config(tmp_path)

    def boom(config: Any) -> Any:
        raise RuntimeError("library bug")

    async def main() -> None:
        app = app_mod.App(cfg, configure_logging=False)
        app.load()
        runtime = app.runtime
        monkeypatch.setattr(app_mod, "build_runtime", boom)
        assert await app.reload() is False
        assert app.reload_failures == 1 and app.runtime is runtime
        app.stopping.set()
        assert await app.reload() is False  # nothing is reloaded once stopping
        app.close()

    asyncio.run(main())


def test_reload_keeps_the_cache_only_for_the_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a blocking (LDAP-like) directory: a reload with the same [ldap] keeps the warm
    cache; a changed [ldap] drops it. Cache counters (metrics) carry over either way; replaced
    runtimes are closed at the end."""
    import policyd.policy.app as app_mod
    from policyd.config import Config
    from policyd.directory.cache import CachedLookups, LookupRunner
    from policyd.networks import Networks
    from policyd.runtime import Runtime

    closed: list[int] = []

    class FakeLdap:
        blocking = True

        def addresses_of(self, login: str) -> frozenset[str]:
            return frozenset({f"{login}@example.org"})

        def owners_of(self, address: str) -> frozenset[str]:
            return frozenset()

        def identity_of(self, login: str) -> frozenset[str]:
            return frozenset({f"login={login}"})

        def close(self) -> None:
            closed.append(1)

    def fake_build(config: Config) -> Runtime:
        runner = LookupRunner(FakeLdap(), threads=1, deadline=1.0)
        lookups = CachedLookups(runner, config.cache)
        return Runtime(
            config, Networks.empty(), config.addresses.rules(), runner.directory, lookups
        )

    cfg = write_config(tmp_path)
    monkeypatch.setattr(app_mod, "build_runtime", fake_build)

    async def main() -> None:
        app = app_mod.App(cfg, configure_logging=False)
        app.load()
        first = app.runtime.lookups
        assert isinstance(first, CachedLookups)
        await first.addresses_of("alice")
        assert await app.reload()
        second = app.runtime.lookups
        assert isinstance(second, CachedLookups) and second is not first
        assert second._entries is first._entries and len(second) == 1  # warm cache kept
        assert second.stats is first.stats and first.stats.misses == 1
        replace_file(cfg, cfg.read_text() + '\n[ldap]\nservers = ["ldap://192.0.2.1"]\n')
        assert await app.reload()
        third = app.runtime.lookups
        assert isinstance(third, CachedLookups) and len(third) == 0  # another directory: dropped
        assert third.stats is first.stats  # counters never go backwards
        assert len(app._retired) == 2 and not closed
        app.close()
        assert app._retired == [] and len(closed) == 3

    asyncio.run(main())
