"""Shared by the sections: paths, pinned processes, servers, the load generator, configs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
#: the script the sections start again as a child process (--_ranges-child, --_ldap-child)
RUN = BENCH / "run.py"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from loadgen import Workload, parse_mix  # noqa: E402

PY = sys.executable
SERVER_CPU = "0"
CLIENT_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------------------------
# processes


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def pinned(cpu: str, cmd: Sequence[str]) -> list[str]:
    if shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", cpu, *cmd]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class Server:
    """A server process pinned to the server CPU; stopped by PID."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        log: Path | None,
        env: dict[str, str],
        cwd: Path = REPO,
    ):
        self.name = name
        self.port = port
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            pinned(SERVER_CPU, cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd=cwd,
        )
        if log:
            out.close()  # type: ignore[union-attr]
        try:
            wait_port(port, self.proc)
        except Exception:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def server_env(no_uvloop: bool, src: Path = REPO) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    if no_uvloop:
        env["POLICYD_NO_UVLOOP"] = "1"
    else:
        env.pop("POLICYD_NO_UVLOOP", None)
    return env


# `policyd serve` exactly as the CLI runs it; with --no-uvloop, uvloop is made unimportable
# first (cli._run then falls back to asyncio.run), and the loop in use is printed on stderr.
POLICYD_MAIN = textwrap.dedent("""\
    import os, sys
    if os.environ.get("POLICYD_NO_UVLOOP"):
        sys.modules["uvloop"] = None
    try:
        import uvloop
        kind = "uvloop"
    except ImportError:
        kind = "asyncio"
    print(f"policyd-bench: event loop {kind}", file=sys.stderr, flush=True)
    from policyd.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def start_policyd(
    config: Path,
    port: int,
    no_uvloop: bool,
    log: Path | None,
    src: Path = REPO,
    name: str = "policyd",
) -> Server:
    """`policyd serve` from the source tree `src` (default: this checkout)."""
    cmd = [
        PY,
        "-c",
        POLICYD_MAIN,
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    return Server(name, cmd, port, log, server_env(no_uvloop, src), cwd=src)


def build_of(src: Path) -> str:
    """Which build `policyd serve` from `src` runs (policyd.build.describe(); a tree from
    before policyd/build.py existed is pure)."""
    if not (src / "policyd" / "build.py").exists():
        # (asked inside, this checkout's editable install would answer for the other tree)
        return "pure Python"
    code = (
        "try:\n from policyd.build import describe\nexcept ImportError:\n"
        " print('pure Python')\nelse:\n print(describe())"
    )
    p = subprocess.run(
        [PY, "-c", code],
        capture_output=True,
        text=True,
        env=server_env(False, src),
        cwd=src,
        timeout=60,
        check=True,
    )
    return p.stdout.strip()


def compiled_tree(arg: str) -> Path:
    """--compiled: the given tree, or the one scripts/build-compiled makes of this checkout."""
    if arg != "build":
        return Path(arg).resolve()
    p = subprocess.run(
        [str(REPO / "scripts" / "build-compiled")], capture_output=True, text=True, cwd=REPO
    )
    if p.returncode != 0:
        raise SystemExit(f"scripts/build-compiled failed:\n{p.stderr[-2000:]}")
    return Path(p.stdout.strip().splitlines()[-1])


def start_bare(port: int, no_uvloop: bool, log: Path | None, parse: bool = False) -> Server:
    cmd = [PY, str(BENCH / "bare_responder.py"), "--listen", f"127.0.0.1:{port}"]
    if no_uvloop:
        cmd.append("--no-uvloop")
    if parse:
        cmd.append("--parse")
    return Server("parse" if parse else "bare", cmd, port, log, server_env(no_uvloop))


def loadgen(port: int, args: Sequence[str], timeout: float = 600) -> dict[str, object]:
    cmd = pinned(CLIENT_CPU, [PY, str(BENCH / "loadgen.py"), "--port", str(port), *args])
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"loadgen failed: {p.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def measure(server: Server, args: Sequence[str]) -> dict[str, object]:
    """One load run; adds the server's CPU seconds per request (from /proc)."""
    c0 = cpu_seconds(server.pid)
    t0 = time.monotonic()
    r = loadgen(server.port, args)
    wall = time.monotonic() - t0
    c1 = cpu_seconds(server.pid)
    # CPU is sampled around the whole loadgen process (start-up and warm-up included); the
    # server is idle while the load generator starts, so scale by the measured share.
    r["server_cpu_s"] = c1 - c0
    r["wall_s"] = wall
    return r


# --------------------------------------------------------------------------------------------
# configs


def write_file_config(work: Path, wl: Workload) -> Path:
    (work / "ranges.txt").write_text("\n".join(wl.range_lines()) + "\n")
    (work / "senders.txt").write_text("\n".join(wl.directory_lines()) + "\n")
    cfg = work / "policyd.toml"
    cfg.write_text(
        PROFILES_TOML.format(directory='backend = "file"\nfile = "senders.txt"', extra="")
    )
    return cfg


PROFILES_TOML = """\
# written by bench/run.py
[server]
max_connections = 1000

[logging]
level = "info"
target = "stderr"

[networks]
files = ["ranges.txt"]

[directory]
{directory}

{extra}

[profiles.submission]
role = "submission"
mode = "enforce"
check_state = "RCPT"
ports = [587]
accept_action = "OK"
protect_local_senders = false

[profiles.mx]
role = "mx"
mode = "enforce"
check_state = "RCPT"
ports = [25]
accept_action = "OK"
protect_local_senders = true
"""


def write_pool(path: Path, requests: list[bytes]) -> Path:
    path.write_bytes(b"".join(requests))
    return path


def wl_pool_unique(work: Path, offset: int, n: int) -> Path:
    """n authenticated requests (owned/foreign 9:1), each for a login not used before."""
    wl = Workload(logins=10**9, mix=parse_mix("owned=9,foreign=1"))
    return write_pool(
        work / f"pool-unique-{offset}.bin", wl.pool(n, unique_logins=True, offset=offset)
    )
