"""In-process PolicyServer harness for the integration tests.

A real PolicyServer on real sockets (TCP on 127.0.0.1 / ::1, unix sockets in tmp_path), built
the way `policyd serve` builds it (config -> build_runtime -> PolicyService -> PolicyServer), with
the embedded file directory written to tmp_path. For the directory-failure tests there is
`BlockingDirectory`, a small test backend implementing policyd.directory.base.Directory whose
calls can be delayed, made to fail, or held on a threading.Event.

No pytest-asyncio: a test calls `run(coro)` (asyncio, or uvloop when asked) itself. Every wait
here is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyd.config import Config, config_from_dict
from policyd.core.request import Request
from policyd.directory.base import DirectoryUnavailable
from policyd.directory.cache import CachedLookups, LookupRunner
from policyd.directory.lookups import DirectLookups
from policyd.networks import Networks
from policyd.policy.app import App
from policyd.policy.protocol import encode_request
from policyd.policy.server import PolicyServer
from policyd.policy.service import PolicyService
from policyd.runtime import Runtime

# --------------------------------------------------------------------------------------------
# Data

SENDERS = """\
# test directory
alice:       alice@example.org, alice.smith@example.org
bob:         bob@example.org
carol:       @carol.example
alice, bob:  sales@example.org
"""

RANGES = """\
192.0.2.0/24      customers
198.51.100.0/24   restricted   domains=example.com
2001:db8::/32     v6customers
"""

#: client addresses: in the allocated range, in the domain-restricted range, outside both
IN_RANGE = "192.0.2.10"
RESTRICTED = "198.51.100.7"
OUTSIDE = "203.0.113.9"

DEFER_LOOKUP = "451 4.3.0 Temporary lookup failure, please try again later"
DEFER_INTERNAL = "451 4.3.0 Temporary policy failure, please try again later"
AUTH_REQUIRED = (
    "554 5.7.1 Relay access denied: {client} is not in our network; "
    "enable SMTP authentication in your mail client"
)
NOT_OWNED = "553 5.7.1 Sender address <{sender}> is not owned by user {login}"
REQUIRES_LOGIN = "553 5.7.1 Sender address <{sender}> requires SMTP authentication"

#: Actions that let mail through: a server must never send one for a broken request.
PERMISSIVE = ("OK", "DUNNO", "RELAY", "PERMIT")


def request(**attrs: str) -> dict[str, str]:
    """A request as Postfix 3.7 sends it at RCPT time, with overrides."""
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": OUTSIDE,
        "client_name": "unknown",
        "client_port": "40000",
        "reverse_client_name": "unknown",
        "server_address": "127.0.0.1",
        "server_port": "587",
        "helo_name": "client.test",
        "sender": "alice@example.org",
        "recipient": "someone@external.test",
        "recipient_count": "0",
        "queue_id": "",
        "instance": "413f.6b0bdf9a.e01d7.0",
        "size": "0",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "policy_context": "",
    }
    base.update(attrs)
    return base


def authed(login: str, sender: str, **attrs: str) -> dict[str, str]:
    return request(sasl_method="PLAIN", sasl_username=login, sender=sender, **attrs)


# --------------------------------------------------------------------------------------------
# Config and runtime


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def make_config(tmp_path: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Write senders + ranges into tmp_path and build a Config (two profiles: submission on
    port 587, mx on port 25 with protect_local_senders)."""
    senders = tmp_path / "senders.txt"
    ranges = tmp_path / "ranges.txt"
    senders.write_text(SENDERS, encoding="utf-8")
    ranges.write_text(RANGES, encoding="utf-8")
    data: dict[str, Any] = {
        "server": {"listen": ["127.0.0.1:0"]},
        "networks": {"files": [str(ranges)]},
        "directory": {"backend": "file", "file": str(senders)},
        "profiles": {
            "submission": {"role": "submission", "ports": [587]},
            "mx": {"role": "mx", "ports": [25], "protect_local_senders": True},
        },
    }
    data = _merge(data, overrides or {})
    return config_from_dict(data, source=str(tmp_path / "policyd.toml"), base_dir=tmp_path)


def runtime_with(config: Config, directory: Any) -> Runtime:
    """A Runtime like build_runtime's, but with the given Directory backend."""
    rules = config.addresses.rules()
    networks = Networks.load(config.networks.files) if config.networks.files else Networks.empty()
    lookups: CachedLookups | DirectLookups
    if directory.blocking:
        runner = LookupRunner(directory, config.directory.threads, config.directory.lookup_deadline)
        lookups = CachedLookups(runner, config.cache)
    else:
        lookups = DirectLookups(directory)
    return Runtime(config, networks, rules, directory, lookups)


class BlockingDirectory:
    """A test Directory backend (policyd.directory.base.Directory).

    - ``delays``: key (login or address) -> seconds the call sleeps first;
    - ``fail``: key (or "*") -> exception the call raises;
    - ``gate``: while cleared, every call blocks on it (a hung directory); bounded by
      ``max_hang`` seconds so no thread outlives the test.
    """

    def __init__(
        self,
        owned: Mapping[str, Iterable[str]] | None = None,
        *,
        blocking: bool = True,
        delays: Mapping[str, float] | None = None,
        fail: Mapping[str, BaseException] | None = None,
        max_hang: float = 20.0,
    ) -> None:
        self.blocking = blocking
        self.owned = {
            k: frozenset(v)
            for k, v in (
                owned
                or {
                    "alice": ["alice@example.org", "sales@example.org"],
                    "bob": ["bob@example.org", "sales@example.org"],
                    "carol": ["@carol.example"],
                }
            ).items()
        }
        self.delays = dict(delays or {})
        self.fail = dict(fail or {})
        self.gate = threading.Event()
        self.gate.set()
        self.max_hang = max_hang
        self._lock = threading.Lock()
        self.calls = 0
        self.inside = 0
        self.closed = False

    def hang(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def _enter(self, key: str) -> None:
        with self._lock:
            self.calls += 1
            self.inside += 1
        try:
            delay = self.delays.get(key, 0.0)
            if delay:
                time.sleep(delay)
            if not self.gate.wait(self.max_hang):
                raise DirectoryUnavailable("test directory: gate never opened")
            exc = self.fail.get(key) or self.fail.get("*")
            if exc is not None:
                raise exc
        finally:
            with self._lock:
                self.inside -= 1

    def addresses_of(self, login: str) -> frozenset[str]:
        self._enter(login)
        return self.owned.get(login, frozenset())

    def owners_of(self, address: str) -> frozenset[str]:
        self._enter(address)
        return frozenset(login for login, addrs in self.owned.items() if address in addrs)

    def identity_of(self, login: str) -> frozenset[str]:
        self._enter(login)
        return frozenset({f"login={login}"}) if login in self.owned else frozenset()

    def close(self) -> None:
        self.closed = True
        self.gate.set()


# --------------------------------------------------------------------------------------------
# Running a server


@dataclass
class Harness:
    server: PolicyServer
    service: PolicyService
    runtime: Runtime
    config: Config
    decisions: list[tuple[str, str]] = field(default_factory=list)

    def address(self, kind: str = "tcp4") -> str:
        for a in self.server.addresses:
            if kind == "unix" and a.startswith("unix:"):
                return a
            if kind == "tcp6" and a.startswith("["):
                return a
            if kind == "tcp4" and not a.startswith(("unix:", "[")):
                return a
        raise LookupError(f"no {kind} listener in {self.server.addresses}")


@contextlib.asynccontextmanager
async def serving(
    config: Config,
    directory: Any = None,
    listen: Iterable[str] | None = None,
    stop_timeout: float = 2.0,
    sockets: Iterable[socket.socket] = (),
) -> AsyncIterator[Harness]:
    """The real App (what `policyd serve` runs), with this config and optionally a test
    directory backend, started on these listeners and stopped at the end."""
    decisions: list[tuple[str, str]] = []

    def hook(req: Request, profile: str, decision: Any, elapsed: float) -> None:
        decisions.append((profile, decision.reason.value))

    passed = list(sockets)
    app = App(
        Path(config.source),
        listen=list(listen) if listen is not None else None,
        sockets=passed,
        environ={},
        configure_logging=False,
        hooks=[hook],
        config_loader=lambda _path: config,
        runtime_factory=None if directory is None else lambda c: runtime_with(c, directory),
    )
    app.load()
    await app.start()
    assert app.service is not None
    h = Harness(app.server, app.service, app.runtime, config, decisions)
    try:
        yield h
    finally:
        if directory is not None:
            directory.release()
        await app.stop(stop_timeout)


def listening_socket(backlog: int) -> socket.socket:
    """A bound, listening TCP socket on 127.0.0.1 (as systemd would pass one)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    s.setblocking(False)
    return s


def has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def loop_kinds() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def run(coro: Coroutine[Any, Any, Any], loop: str = "asyncio") -> Any:
    """Run a test coroutine on a fresh event loop (the stdlib one, or uvloop)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------------------------
# Clients


def split_address(address: str) -> tuple[str, str | int]:
    """ "unix:/p" -> ("unix", "/p"); "h:p" / "[h]:p" -> (host, port)."""
    if address.startswith("unix:"):
        return "unix", address[5:]
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Client:
    """A small policy client on asyncio streams. Every read has a timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: str, timeout: float = 5.0) -> Client:
        host, port = split_address(address)
        if host == "unix":
            assert isinstance(port, str)
            coro = asyncio.open_unix_connection(port, limit=4 * 1024 * 1024)
        else:
            coro = asyncio.open_connection(host, port, limit=4 * 1024 * 1024)
        reader, writer = await asyncio.wait_for(coro, timeout)
        return cls(reader, writer)

    def send(self, data: bytes | Mapping[str, str]) -> None:
        if not isinstance(data, bytes | bytearray):
            data = encode_request(data)
        self.writer.write(data)

    async def reply(self, timeout: float = 5.0) -> str:
        """One reply; checks its framing (``action=...`` then an empty line)."""
        data = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), timeout)
        assert data.startswith(b"action="), data[:200]
        assert data.count(b"\n") == 2, data[:200]
        return data[len(b"action=") : -2].decode("utf-8")

    async def ask(self, attrs: Mapping[str, str], timeout: float = 5.0) -> str:
        self.send(attrs)
        await self.writer.drain()
        return await self.reply(timeout)

    async def read_to_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the server closes (a reset counts as a close)."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no EOF within {timeout}s; got {b''.join(chunks)[:200]!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    async def nothing_for(self, seconds: float) -> bytes:
        """Bytes that arrive within `seconds` (b"" if none; EOF also gives b"")."""
        try:
            return await asyncio.wait_for(self.reader.read(65536), seconds)
        except TimeoutError:
            return b""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


async def round_trip(
    address: str, attrs: Mapping[str, str], timeout: float = 5.0
) -> tuple[str, float]:
    """Connect, ask once, close. Returns (action, seconds for the request/reply only)."""
    c = await Client.connect(address, timeout)
    try:
        t0 = time.perf_counter()
        action = await c.ask(attrs, timeout)
        return action, time.perf_counter() - t0
    finally:
        await c.aclose()


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(step)
    return cond()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
