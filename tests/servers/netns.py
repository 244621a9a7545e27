"""Several "hosts" on one machine: network namespaces joined by point-to-point veth pairs.

    net = Netns.create(["prov", "cons", "mta1"], tag="pd1234")   # namespaces pd1234-prov, ...
    a, b = net.link("prov", "cons")          # a veth pair, one /24 of the test subnet per link
    a.ip, b.ip                               # 10.231.1.1 in prov, 10.231.1.2 in cons
    net.argv("mta1", ["policyd", "serve"])   # ["ip", "netns", "exec", "pd1234-mta1", ...]
    net.cut(b)                               # `ip link set DEV down` on that end
    net.heal(b)
    net.destroy()                            # also at interpreter exit, by name

Addresses come from TEST_SUBNET and exist only inside these namespaces: the root namespace gets
no address and no route, so no test packet can leave the namespaces. Every interface is created
directly inside its namespace (`ip link add ... netns A type veth peer ... netns B`), so nothing
is ever named in the root namespace either.

How a cut looks to the other end (measured on this kernel, which has no netem/prio/matchall
qdiscs and no iptables, so a cut is a link state):
- the end on the *client's* side down: its connects fail at once ("Network is unreachable"),
  like a refused server;
- the end on the *server's* side down: the client's interface stays up (NO-CARRIER), its
  packets vanish, connects and reads time out, like a cable cut behind a switch.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

#: The test subnet (a /16 of RFC 1918 space), used only inside the namespaces made here.
TEST_SUBNET = ipaddress.IPv4Network("10.231.0.0/16")

#: Namespaces still to delete at interpreter exit (names), whatever happened to the test.
_LIVE: set[str] = set()


def _ip() -> str:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin") or "ip"


def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


class NetnsError(RuntimeError):
    pass


def _delete(name: str) -> None:
    _run([_ip(), "netns", "delete", name], check=False)
    _LIVE.discard(name)


def _delete_all() -> None:
    for name in sorted(_LIVE):
        _delete(name)


atexit.register(_delete_all)


def available() -> str:
    """ "" when namespaces can be made here, else why not (not root, no `ip`, ...)."""
    import os

    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which(_ip()):
        return "iproute2's `ip` is not installed"
    probe = f"pdprobe-{os.getpid()}"
    p = _run([_ip(), "netns", "add", probe], check=False)
    if p.returncode != 0:
        return f"`ip netns add` failed: {p.stderr.strip()}"
    _delete(probe)
    return ""


def reap_stale(hosts: Sequence[str]) -> list[str]:
    """Delete namespaces left by an earlier run that was killed before its atexit ran: names
    "pd<PID>-<host>" for these hosts whose PID is no longer alive. Their processes (a slapd or
    policyd that run started) are killed by PID first (`ip netns pids`)."""
    import os
    import re
    import signal

    pattern = re.compile(r"^pd(\d+)-(" + "|".join(re.escape(h) for h in hosts) + r")$")
    gone = []
    for line in _run([_ip(), "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = pattern.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for pid in _run([_ip(), "netns", "pids", name], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGCONT)
                os.kill(int(pid), signal.SIGKILL)
        _run([_ip(), "netns", "delete", name], check=False)
        gone.append(name)
    return gone


@dataclass(frozen=True)
class End:
    """One end of a link: the interface `dev` in namespace `ns` with address `ip`."""

    ns: str  # the host's short name ("mta1")
    dev: str
    ip: str
    peer: str  # the host at the other end


class Netns:
    def __init__(self, tag: str, hosts: Sequence[str]) -> None:
        self.tag = tag
        self.hosts = list(hosts)
        self.ends: list[End] = []
        self._links = 0

    @classmethod
    def create(cls, hosts: Sequence[str], tag: str) -> Netns:
        reap_stale(hosts)
        net = cls(tag, hosts)
        try:
            for h in hosts:
                name = net.name(h)
                _run([_ip(), "netns", "add", name])
                _LIVE.add(name)
                _run([_ip(), "-n", name, "link", "set", "lo", "up"])
        except BaseException:
            net.destroy()
            raise
        return net

    def name(self, host: str) -> str:
        """The namespace's real name: unique per test run (tag holds the pid)."""
        return f"{self.tag}-{host}"

    def link(self, a: str, b: str) -> tuple[End, End]:
        """A veth pair between hosts a and b, with its own /24: a gets .1, b gets .2."""
        self._links += 1
        k = self._links
        if k > 250:
            raise NetnsError("too many links")
        net = list(TEST_SUBNET.subnets(new_prefix=24))[k]
        ea = End(a, f"to-{b}"[:15], str(net[1]), b)
        eb = End(b, f"to-{a}"[:15], str(net[2]), a)
        ip = _ip()
        _run(
            [ip, "link", "add", "name", ea.dev, "netns", self.name(a), "type", "veth", "peer"]
            + ["name", eb.dev, "netns", self.name(b)]
        )
        for e in (ea, eb):
            _run([ip, "-n", self.name(e.ns), "addr", "add", f"{e.ip}/24", "dev", e.dev])
            _run([ip, "-n", self.name(e.ns), "link", "set", e.dev, "up"])
        self.ends += [ea, eb]
        return ea, eb

    def end(self, host: str, peer: str) -> End:
        for e in self.ends:
            if e.ns == host and e.peer == peer:
                return e
        raise NetnsError(f"no link {host} -> {peer}")

    def argv(self, host: str, cmd: Sequence[str]) -> list[str]:
        """cmd run "on" host. `ip netns exec` execs cmd, so the PID is cmd's own."""
        return [_ip(), "netns", "exec", self.name(host), *cmd]

    def run(
        self, host: str, cmd: Sequence[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(host, cmd), capture_output=True, text=True, timeout=timeout)

    def cut(self, e: End) -> None:
        _run([_ip(), "-n", self.name(e.ns), "link", "set", e.dev, "down"])

    def heal(self, e: End) -> None:
        _run([_ip(), "-n", self.name(e.ns), "link", "set", e.dev, "up"])

    def established(self, host: str, port: int) -> list[str]:
        """Peer addresses of the host's established TCP connections to `port` (from `ss`)."""
        p = self.run(host, ["ss", "-Htn", "state", "established", f"( dport = :{port} )"])
        peers = []
        for line in p.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                peers.append(cols[-1].rsplit(":", 1)[0])
        return peers

    def destroy(self) -> None:
        """Delete every namespace of this run by name (their veths go with them)."""
        for h in self.hosts:
            _delete(self.name(h))

    def leftovers(self) -> list[str]:
        p = _run([_ip(), "netns", "list"], check=False)
        return [
            line.split()[0]
            for line in p.stdout.splitlines()
            if line.split() and line.split()[0].startswith(self.tag + "-")
        ]

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.destroy()
