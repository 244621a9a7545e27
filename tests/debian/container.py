"""A booted Debian 13 container (systemd-nspawn -b, systemd as PID 1), driven from inside.

- The rootfs is the cached `./scripts/trixie-rootfs boot` (debootstrap minbase + systemd, dbus,
  python3, pytest); every container gets a fresh overlay of it (upper and work dirs in a temp
  dir), so nothing a test does reaches the cache.
- Before the boot, `prefetch()` runs apt inside the overlay (not booted, host network) to
  fill the shared download cache with what the tests will install; the booted container then
  has `--private-network`: its own loopback and nothing else, so Postfix on port 25/587 and
  policyd on 10040 cannot clash with the host, and no traffic leaves it.
- `run()` executes a command inside with `nsenter` into the container's PID 1 (all
  namespaces). There is no machined here, so `--register=no --keep-unit` and no machinectl.
- `stop()` powers the container off (SIGTERM to nspawn), waits, kills by PID if it must, and
  unmounts the overlay: always called from a fixture's finally.

Host paths: `out` (bind-mounted at /out) exchanges files with the container.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("POLICYD_TEST_CACHE", "/var/cache/policyd-test"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rootfs(flavor: str = "boot") -> Path:
    """The cached trixie rootfs (built on first use: debootstrap + apt, a few minutes)."""
    r = subprocess.run(
        [str(REPO / "scripts/trixie-rootfs"), flavor],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if r.returncode != 0:
        raise RuntimeError(f"trixie-rootfs {flavor} failed:\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


class Container:
    def __init__(self, lower: Path, name_prefix: str = "policyd-deb") -> None:
        self.lower = lower
        self.name = f"{name_prefix}-{uuid.uuid4().hex[:8]}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.tmp.chmod(0o755)
        self.root = self.tmp / "root"
        self.out = self.tmp / "out"
        for d in ("upper", "work", "root", "out"):
            (self.tmp / d).mkdir()
        self.out.chmod(0o777)
        self.mounted = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.console = self.tmp / "console.log"

    # lifecycle -------------------------------------------------------------------------

    def mount(self) -> None:
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.lower},upperdir={self.tmp / 'upper'},workdir={self.tmp / 'work'}",
                str(self.root),
            ],
            check=True,
            timeout=30,
        )
        self.mounted = True

    def _nspawn(self, *extra: str) -> list[str]:
        return [
            "systemd-nspawn",
            "-q",
            "-D",
            str(self.root),
            "--register=no",
            "--keep-unit",
            f"--bind={CACHE / 'archives'}:/var/cache/apt/archives",
            f"--bind={self.out}:/out",
            *extra,
        ]

    def prefetch(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the (not booted) overlay with the host's network: apt
        downloads into the shared cache, debconf answers, files the boot needs."""
        (CACHE / "archives/partial").mkdir(parents=True, exist_ok=True)
        lock = os.open(CACHE / ".lock-apt", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # one apt on the shared archives at a time
            return subprocess.run(
                [
                    *self._nspawn("--as-pid2", "--setenv=DEBIAN_FRONTEND=noninteractive"),
                    "sh",
                    "-ec",
                    script,
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(lock)

    def boot(self, timeout: float = 60) -> None:
        log = open(self.console, "wb")  # noqa: SIM115 (closed in stop via the process)
        self.proc = subprocess.Popen(
            [
                "timeout",
                "--kill-after=15",
                "1200",
                *self._nspawn("-M", self.name, "--private-network", "-b"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"container exited at boot:\n{self.console.read_text()[-3000:]}")
            self.leader = self._find_leader()
            if self.leader:
                r = self.run(
                    "systemctl is-system-running --wait",
                    timeout=max(1, deadline - time.monotonic()),
                    check=False,
                )
                if r.stdout.strip() in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"container did not boot in {timeout}s:\n{self.console.read_text()[-3000:]}"
        )

    def _find_leader(self) -> int:
        """The container's PID 1: the process running systemd below our nspawn."""
        assert self.proc is not None
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in _children(pid):
                try:
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == "systemd":
                    return child
                todo.append(child)
        return 0

    def stop(self) -> None:
        """Power off (SIGTERM to nspawn makes it stop the container), bounded; then kill
        whatever is left of our process group by PID and unmount the overlay."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.leader:
                    with contextlib.suppress(Exception):
                        self.run("systemctl poweroff --no-block", timeout=10, check=False)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGTERM)
                    try:
                        self.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(self.proc.pid, signal.SIGKILL)
                        self.proc.wait(timeout=10)
        finally:
            self._unmount()

    def _unmount(self) -> None:
        if self.mounted:
            for args in (["umount", str(self.root)], ["umount", "-l", str(self.root)]):
                if subprocess.run(args, timeout=30, capture_output=True).returncode == 0:
                    break
                time.sleep(0.5)
            self.mounted = False
        # anything nspawn left mounted below our dir (it normally cleans up itself)
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(self.tmp)):
                subprocess.run(["umount", "-l", target], timeout=30, capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # driving it ------------------------------------------------------------------------

    def run(
        self, script: str, timeout: float = 60, check: bool = True, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the booted container (as root, or `user`)."""
        assert self.leader, "not booted"
        cmd = [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "--",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "HOME=/root",
        ]
        if user is not None:
            cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        r = subprocess.run(
            [*cmd, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"in container: {script!r} -> rc {r.returncode}\n"
                f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
            )
        return r

    def journal(self, unit: str, since: str = "") -> str:
        s = f" --since='{since}'" if since else ""
        self.run("journalctl --sync", check=False)
        return self.run(f"journalctl -q -o cat --no-pager -u {unit}{s}").stdout


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [
                    int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                ]
    return out
