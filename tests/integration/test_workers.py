"""server.workers > 1 (issue 29): real `python -m policyd serve` processes, a supervisor and its
workers, on loopback TCP and a unix socket.

Which worker holds a connection is read from /proc, not from anything policyd says: each
worker's open socket fds (/proc/PID/fd -> socket:[inode]) before and while the test holds its
connections open. The workers are the supervisor's child processes (/proc/*/stat ppid).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policyd.policy.protocol import encode_request
from tests.integration.test_ops import (
    _LAUNCHER,
    CLIENT,
    DENY,
    OK,
    PY,
    RANGES_B,
    REPO,
    Client,
    Daemon,
    free_port,
    replace_file,
    request,
    write_config,
)
from tests.servers.requirements import require_binaries

Address = tuple[str, int] | str


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """For unix socket paths (108-byte limit; tmp_path can be long)."""
    with tempfile.TemporaryDirectory(prefix="pd-", dir="/tmp") as d:
        yield Path(d)


def workers_config(d: Path, listen: list[str], workers: str = "2", **kw: object) -> Path:
    cfg = write_config(d, listen=listen[0], **kw)  # type: ignore[arg-type]
    text = cfg.read_text()
    listed = ", ".join(f'"{spec}"' for spec in listen)
    text = text.replace(f'listen = ["{listen[0]}"]', f"listen = [{listed}]\nworkers = {workers}")
    replace_file(cfg, text)
    return cfg


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (zombies excluded), from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def sockets_of(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def start_workers(daemons: list[Daemon], tmp: Path, cfg: Path, n: int = 2, **kw: object) -> Daemon:
    d = Daemon(["serve", "--config", str(cfg)], tmp, **kw)  # type: ignore[arg-type]
    daemons.append(d)
    d.wait_log(f"with {n} worker processes", timeout=30)
    wait_for(f"{n} workers", lambda: len(children(d.proc.pid)) == n)
    return d


def spread(
    d: Daemon, address: Address, n: int = 60, expect: str = OK
) -> tuple[list[Client], dict[int, int]]:
    """Open `n` connections, one request each (answered `expect`), and keep them open; how many
    of them each worker process holds, from its socket fds. Steered: for the i-th connection
    every worker but the i-th (in turn) is stopped (SIGSTOP), so the kernel can give it only to
    that one: a worker without the socket would leave it unanswered (the ask times out). Left
    to the kernel, which of two idle workers accepts first is a matter of scheduling: one of
    them took all 40 in a Debian 13 container."""
    workers = sorted(children(d.proc.pid))
    before = {w: sockets_of(w) for w in workers}
    clients = []
    for i in range(n):
        others = [w for w in workers if w != workers[i % len(workers)]]
        for w in others:
            os.kill(w, signal.SIGSTOP)
        try:
            c = Client(address)
            assert c.ask() == expect
        finally:
            for w in others:
                os.kill(w, signal.SIGCONT)
        clients.append(c)
    held = {w: len(sockets_of(w) - before[w]) for w in workers}
    assert sum(held.values()) == n, held
    return clients, held


def test_one_worker_is_one_process(tmp_path: Path, daemons: list[Daemon]) -> None:
    """The default (and workers = 1) is today's single process: no supervisor, no child."""
    port = free_port()
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"], workers="1")
    d = Daemon(["serve", "--config", str(cfg)], tmp_path)
    daemons.append(d)
    d.wait_port(port)
    c = Client(("127.0.0.1", port))
    assert c.ask() == OK
    c.close()
    assert children(d.proc.pid) == set()
    assert "worker" not in d.log()
    assert d.stop() == 0


def test_two_workers_share_tcp_and_unix_listeners(
    tmp_path: Path,
    short_dir: Path,
    daemons: list[Daemon],
) -> None:
    port, unix_path = free_port(), str(short_dir / "policy.sock")
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}", f"unix:{unix_path}"])
    d = start_workers(daemons, tmp_path, cfg)
    assert oct(os.stat(unix_path).st_mode & 0o777) == "0o660"  # bound once, by the supervisor
    for address in (("127.0.0.1", port), unix_path):
        clients, held = spread(d, address)
        assert sum(1 for k in held.values() if k) == 2, f"one worker took all: {held}"
        for c in clients:
            assert c.ask(request(client="203.0.113.1")) == DENY.replace(CLIENT, "203.0.113.1")
            c.close()
    d.wait_log("policyd.decision: decision", count=2 * 60 * 2)  # (written after the replies)
    workers = children(d.proc.pid)
    assert d.stop() == 0
    assert not any(os.path.exists(f"/proc/{w}") for w in workers), "a worker outlived the stop"
    assert not os.path.exists(unix_path), "the supervisor unlinks the socket it bound"
    assert "policyd.workers: stopped" in d.log()


def test_sighup_reloads_every_worker_and_a_bad_config_none(
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    port = free_port()
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"])
    d = start_workers(daemons, tmp_path, cfg)
    clients, held = spread(d, ("127.0.0.1", port))
    assert all(held.values()), held
    # a broken config: checked once by the supervisor, logged once, no worker touched
    good = cfg.read_text()
    replace_file(cfg, good + "\n[server]\nbogus = 1\n")
    d.signal(signal.SIGHUP)
    d.wait_log("reload failed, every worker keeps the running config")
    time.sleep(0.5)
    log = d.log()
    assert log.count("reload failed") == 1, log
    assert "policyd.app: reloaded" not in log
    assert all(c.ask() == OK for c in clients)
    # a good one (the client's range is gone): every worker, on the open connections too
    replace_file(cfg, good)
    replace_file(tmp_path / "ranges.txt", RANGES_B)
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded", count=1)
    d.wait_log("in 2 worker(s)")
    assert d.log().count("policyd.app: reloaded") == 2
    assert all(c.ask() == DENY for c in clients)
    for c in clients:
        c.close()
    clients, held = spread(d, ("127.0.0.1", port), n=40, expect=DENY)
    assert all(held.values()), held
    assert d.stop() == 0


def test_a_killed_worker_is_restarted_and_service_continues(
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    port = free_port()
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"])
    d = start_workers(daemons, tmp_path, cfg)
    first = children(d.proc.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    # the other worker answers meanwhile
    for _ in range(20):
        c = Client(("127.0.0.1", port))
        assert c.ask() == OK
        c.close()
    d.wait_log(f"(pid {victim}) ended unexpectedly (signal SIGKILL); restarting it in 1s")
    wait_for("a new worker", lambda: len(children(d.proc.pid) - first) == 1)
    d.wait_log("policyd.app: policyd listening on", count=3)
    now = children(d.proc.pid)
    assert victim not in now and len(now) == 2
    clients, held = spread(d, ("127.0.0.1", port))
    assert all(held.values()), f"the restarted worker takes connections too: {held}"
    for c in clients:
        c.close()
    # killed again soon after its restart: a longer delay (a backoff, not a tight loop)
    (second,) = now - first
    os.kill(second, signal.SIGKILL)
    d.wait_log(f"(pid {second}) ended unexpectedly (signal SIGKILL); restarting it in 2s")
    time.sleep(1.0)
    assert len(children(d.proc.pid)) == 1, "restarted before its delay"
    wait_for("the slot served again", lambda: len(children(d.proc.pid)) == 2)
    assert d.stop() == 0


def test_a_killed_supervisor_leaves_no_worker(
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    """SIGKILL of the supervisor: the workers see their lifeline close and stop."""
    port = free_port()
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"])
    d = start_workers(daemons, tmp_path, cfg)
    workers = children(d.proc.pid)
    d.proc.kill()
    d.proc.wait(5)
    wait_for(
        "every worker gone",
        lambda: not any(os.path.exists(f"/proc/{w}") and _alive(w) for w in workers),
    )
    assert d.log().count("the supervisor is gone; stopping") == 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_drains_every_worker(tmp_path: Path, daemons: list[Daemon]) -> None:
    """SIGTERM: a request in flight in a worker is answered, idle connections get a clean
    end of stream, every worker is gone and the supervisor exits 0."""
    port = free_port()
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"])
    d = start_workers(daemons, tmp_path, cfg)
    clients, held = spread(d, ("127.0.0.1", port), n=20)
    assert all(held.values()), held
    workers = children(d.proc.pid)
    busy = clients[0]
    data = encode_request(request())
    busy.sock.sendall(data[:-1])  # the request, all but its final empty line
    time.sleep(0.2)
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    busy.sock.sendall(data[-1:])
    assert busy.reply() == OK
    for c in clients[1:]:
        assert c.sock.recv(100) == b""  # FIN, no reset
    assert d.stop() == 0
    assert not any(_alive(w) for w in workers)
    assert d.log().count("policyd.app: stopped") == 2


def test_a_hung_worker_is_killed_and_restarted(tmp_path: Path, daemons: list[Daemon]) -> None:
    """A worker whose event loop stops (SIGSTOP here; an endless loop alike) sends no more
    WATCHDOG=1 to the supervisor: killed after the watchdog timeout (the supervisor's own
    WATCHDOG_USEC, 2 s here), restarted; the other worker serves meanwhile. Healthy workers
    are never killed for it."""
    port = free_port()
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"])
    d = start_workers(daemons, tmp_path, cfg, env={"WATCHDOG_USEC": "2000000"})
    first = children(d.proc.pid)
    time.sleep(3.5)  # (longer than the timeout: the pings keep both alive)
    assert children(d.proc.pid) == first
    assert "hung" not in d.log()
    victim = min(first)
    os.kill(victim, signal.SIGSTOP)
    for _ in range(20):  # the other worker answers meanwhile
        c = Client(("127.0.0.1", port))
        assert c.ask() == OK
        c.close()
    d.wait_log(f"(pid {victim}) hung: no watchdog ping from its event loop for", timeout=10)
    d.wait_log(f"(pid {victim}) ended unexpectedly (signal SIGKILL); restarting it in 1s")
    wait_for("a new worker", lambda: len(children(d.proc.pid) - first) == 1)
    d.wait_log("policyd.app: policyd listening on", count=3)
    assert d.log().count("hung: no watchdog ping") == 1
    clients, held = spread(d, ("127.0.0.1", port))
    assert all(held.values()), f"the new worker takes connections too: {held}"
    for c in clients:
        c.close()
    assert d.stop() == 0


def test_sd_notify_ready_only_when_every_worker_serves(
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    name = f"policyd-test-{uuid.uuid4().hex}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(b"\0" + name.encode())

    def next_message(timeout: float = 20.0) -> str:
        ready, _, _ = select.select([rx], [], [], timeout)
        assert ready, "no sd_notify message"
        return rx.recv(4096).decode()

    port = free_port()
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"])
    d = Daemon(["serve", "--config", str(cfg)], tmp_path, env={"NOTIFY_SOCKET": "@" + name})
    daemons.append(d)
    msg = next_message()
    assert msg.startswith("READY=1"), msg
    assert f"MAINPID={d.proc.pid}" in msg  # the supervisor, not a worker
    assert "2 of 2 workers" in msg
    assert d.log().count("policyd.app: policyd listening on") == 2  # both before READY=1
    d.signal(signal.SIGHUP)
    assert next_message().startswith("RELOADING=1")
    msg = next_message()
    assert msg.startswith("READY=1"), msg
    assert d.log().count("policyd.app: reloaded") == 2  # READY=1 after every worker's reload
    d.signal(signal.SIGTERM)
    assert next_message().startswith("STOPPING=1")
    assert d.stop() == 0
    rx.close()


@pytest.mark.parametrize("launcher", ["by hand", "systemd-socket-activate"])
def test_socket_activation_passes_the_sockets_to_every_worker(
    tmp_path: Path,
    short_dir: Path,
    daemons: list[Daemon],
    launcher: str,
) -> None:
    """LISTEN_FDS/LISTEN_PID as systemd sets them (test_ops's launcher, and systemd's own
    systemd-socket-activate): the supervisor takes the two sockets, every worker serves both;
    server.listen is not bound."""
    port, ignored = free_port(), free_port()
    unix_path = str(short_dir / "policy.sock")
    cfg = workers_config(tmp_path, [f"127.0.0.1:{ignored}"])
    serve = ["serve", "--config", str(cfg)]
    if launcher == "by hand":
        d = Daemon([str(port), unix_path, *serve], tmp_path, argv0=[PY, "-c", _LAUNCHER])
        daemons.append(d)
    else:
        require_binaries("systemd-socket-activate", why="socket activation")
        args = ["-l", f"127.0.0.1:{port}", "-l", unix_path, "--fdname=tcp:unix"]
        for var in ("PATH", "PYTHONPATH", "LANG"):
            args += ["-E", var]
        d = Daemon([*args, PY, "-m", "policyd", *serve], tmp_path, argv0=[launcher])
        daemons.append(d)
        d.wait_log("Listening on")
        first = Client(("127.0.0.1", port), timeout=30)  # (it execs policyd at the first one)
        assert first.ask() == OK
        first.close()
    d.wait_log("with 2 worker processes", timeout=30)
    d.wait_log("socket activation: 2 passed socket(s) (tcp, unix) for every worker")
    for address in (("127.0.0.1", port), unix_path):
        clients, held = spread(d, address, n=40)
        assert all(held.values()), held
        for c in clients:
            c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ignored), timeout=0.5).close()
    assert d.stop() == 0
    assert os.path.exists(unix_path), "a passed unix socket belongs to systemd: never unlinked"


@pytest.mark.parametrize(
    ("workers", "table", "message"),
    [
        ("0", "", 'server.workers: must be an integer >= 1 or "auto", not 0'),
        ('"all"', "", "server.workers: must be an integer >= 1 or \"auto\", not 'all'"),
        ("2", "[metrics]\nenabled = true", "server.workers: 2 with metrics.enabled = true"),
        ("2", "[quotas]\nenabled = true", 'quotas.enabled = true and quotas.store = "none"'),
    ],
)
def test_config_errors_stop_the_start(
    tmp_path: Path, workers: str, table: str, message: str
) -> None:
    port = free_port()
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}")
    text = cfg.read_text().replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    text = text.replace("[metrics]\nenabled = false\n", "") + "\n" + table + "\n"
    replace_file(cfg, text)
    r = subprocess.run(
        [PY, "-m", "policyd", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert r.returncode == 1, r
    assert message in r.stderr, r.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_a_listener_in_use_stops_the_start_before_any_worker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"])
        r = subprocess.run(
            [PY, "-m", "policyd", "serve", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert r.returncode == 1, r
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr, r.stderr
    assert "policyd.app" not in r.stderr, "no worker was started"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sighup_the_moment_ready_arrives_reloads(
    tmp_path: Path, daemons: list[Daemon], workers: str
) -> None:
    """`systemctl reload` right after the start: the signal handlers are in place before
    READY=1 is sent (before, SIGHUP's default action killed policyd in most such runs)."""
    for attempt in range(3):
        name = f"policyd-test-{uuid.uuid4().hex}"
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(b"\0" + name.encode())
        port = free_port()
        cfg = workers_config(tmp_path, [f"127.0.0.1:{port}"], workers=workers)
        d = Daemon(["serve", "--config", str(cfg)], tmp_path, env={"NOTIFY_SOCKET": "@" + name})
        daemons.append(d)
        ready, _, _ = select.select([rx], [], [], 30)
        assert ready and rx.recv(4096).startswith(b"READY=1")
        d.signal(signal.SIGHUP)  # at once
        ready, _, _ = select.select([rx], [], [], 30)
        assert ready, f"attempt {attempt}: no RELOADING=1; exit {d.proc.poll()}\n{d.log()}"
        assert rx.recv(4096).startswith(b"RELOADING=1")
        d.wait_log("reloaded")
        assert d.stop() == 0
        rx.close()
