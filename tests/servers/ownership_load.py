"""A bounded load generator that checks every answer against ground truth.

    truth = Truth()
    load = OwnershipLoad({"mta1": "/run/.../mta1.sock", ...}, truth, plan, rate=400, conns=32)
    load.start()                                   # a thread with its own event loop
    tr = truth.begin(("u04190", "new1@example.org"), owned_after=True, bound=3.0)
    ... change the directory ...
    s = load.summary(t_from, t_to, inst="mta1")    # counts, answers by kind, wrong, p99
    load.stop()

Each instance gets `conns` persistent connections (Postfix's smtpd keeps one per process),
each doing strict ping-pong with full Postfix 3.7 RCPT-time requests, paced so the instance
sees about `rate` requests/s in all. Request kinds (`Plan`):

- ``owned``: a steady login sending as one of its own addresses;
- ``tagged``: the same with a random +tag: the login owns it through the extension-stripped
  form, and the instance must also ask who owns the exact tagged address (Postfix's rule: the
  most specific key with an owner decides), a key it has most likely never looked up;
- ``foreign``: a steady login sending as another steady login's address;
- ``dynamic``: one of the pairs whose ownership the test changes (the truth has a timeline);
- ``cold``: a login never asked before on this instance, sending as its own address (a cache
  miss: what an outage does to a login nobody asked about recently);
- ``unauth``: no login, a client in no allocated range (554, no directory involved).

An answer is **wrong** when it is OK for a sender the login does not own, 553 for one it owns,
or anything else than OK/553/451 (554 for ``unauth``). A 451 is never wrong (the safe answer)
but is counted. Ownership changes have a window (`Truth.begin(..., bound)`): during it both
answers are right, after it only the new one. Everything is bounded: `stop()`, or the
`max_seconds` given to start(), ends the load; every read has a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policyd.policy.protocol import encode_request
from tests.integration.serverutil import authed, request

Pair = tuple[str, str]

KINDS = ("owned", "tagged", "foreign", "dynamic", "cold", "unauth")
#: Kinds whose answer needs only data the instance looked up recently (a cache hit, or stale
#: data while the directory is unreachable). "cold" and "tagged" need a key nobody asked for.
KNOWN = ("owned", "foreign", "dynamic")


@dataclass
class Transition:
    pair: Pair
    start: float
    owned_after: bool
    bound: float
    #: per-instance end of the window (default: start + bound)
    ends: dict[str, float] = field(default_factory=dict)

    def end(self, inst: str) -> float:
        return self.ends.get(inst, self.start + self.bound)

    def extend(self, inst: str, until: float) -> None:
        """The window for `inst` lasts until `until` (e.g. partition healed + bound)."""
        self.ends[inst] = max(self.end(inst), until)


class Truth:
    """Who owns what, over time, for the pairs the test changes."""

    def __init__(self, initial: Mapping[Pair, bool]) -> None:
        self.initial = dict(initial)
        self.transitions: dict[Pair, list[Transition]] = collections.defaultdict(list)
        self._lock = threading.Lock()

    def begin(self, pair: Pair, owned_after: bool, bound: float) -> Transition:
        """Call just before the change is made (its window starts now)."""
        if pair not in self.initial:
            raise KeyError(pair)
        t = Transition(pair, time.monotonic(), owned_after, bound)
        with self._lock:
            self.transitions[pair].append(t)
        return t

    def acceptable(self, pair: Pair, inst: str, t0: float, t1: float) -> tuple[set[bool], bool]:
        """(ownership states a request sent at t0 and answered at t1 may see, whether a
        window was involved)."""
        state = self.initial[pair]
        extra: set[bool] = set()
        with self._lock:
            ts = list(self.transitions.get(pair, ()))
        for t in ts:
            if t.end(inst) < t0:
                state = t.owned_after
            elif t.start <= t1:
                extra.add(t.owned_after)
        return {state} | extra, bool(extra - {state})


@dataclass(frozen=True)
class Plan:
    """What the load asks about: logins/addresses from tests/servers/replication.py's data."""

    steady: Sequence[int]  # user numbers asked all the time
    cold: Mapping[str, Sequence[int]]  # per instance: user numbers each asked once
    dynamic: Sequence[Pair]
    mix: Mapping[str, float]


def _answer_kind(text: str) -> str:
    for prefix, kind in (("OK", "OK"), ("553 ", "553"), ("451 ", "451"), ("554 ", "554")):
        if text == prefix or text.startswith(prefix):
            return kind
    return "other"


# one record: (inst, kind, pair-or-None, expected-owned-or-None, t0, t1, answer kind)
Record = tuple[str, str, Pair | None, bool | None, float, float, str]


@dataclass
class Summary:
    requests: int = 0
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: dict[str, collections.Counter[str]] = field(default_factory=dict)
    wrong: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    in_window: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    def deferred(self, kinds: Sequence[str] = KINDS) -> int:
        return sum(self.by_kind.get(k, collections.Counter())["451"] for k in kinds)

    def line(self) -> str:
        kinds = " ".join(
            f"{k}[{' '.join(f'{a}={n}' for a, n in sorted(c.items()))}]"
            for k, c in sorted(self.by_kind.items())
        )
        return (
            f"requests={self.requests} answers={dict(sorted(self.answers.items()))} "
            f"wrong={self.wrong} in_window={self.in_window} transport_errors={self.errors} "
            f"p50={self.p50_ms:.1f}ms p99={self.p99_ms:.1f}ms max={self.max_ms:.0f}ms | {kinds}"
        )


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


class OwnershipLoad:
    def __init__(
        self,
        sockets: Mapping[str, str],
        truth: Truth,
        plan: Plan,
        *,
        rate: float = 400.0,
        conns: int = 32,
        timeout: float = 10.0,
        seed: int = 1,
    ) -> None:
        self.sockets = dict(sockets)
        self.truth = truth
        self.plan = plan
        self.rate = rate
        self.conns = conns
        self.timeout = timeout
        self.seed = seed
        self.records: list[Record] = []
        self.transport_errors: list[tuple[str, float, str]] = []
        self._cold = {inst: list(reversed(plan.cold.get(inst, ()))) for inst in sockets}
        self._kinds = list(plan.mix)
        self._weights = [plan.mix[k] for k in self._kinds]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._steady = list(plan.steady)

    # -- requests -------------------------------------------------------------------------
    def _make(
        self, inst: str, rnd: random.Random, n: int
    ) -> tuple[str, Pair | None, bool | None, bytes]:
        from tests.servers.replication import alt_address, login, own_address

        kind = rnd.choices(self._kinds, self._weights)[0]
        if kind == "cold" and not self._cold[inst]:
            kind = "owned"
        common = {
            "server_port": "587",
            "client_address": f"203.0.113.{rnd.randrange(1, 255)}",
            "client_port": str(rnd.randrange(1024, 65535)),
            "recipient": f"rcpt{rnd.randrange(10**6)}@external.test",
            "queue_id": f"{n & 0xFFFFFFFFFF:010X}",
            "helo_name": f"host{rnd.randrange(1000)}.client.test",
            "encryption_protocol": "TLSv1.3",
            "encryption_cipher": "TLS_AES_256_GCM_SHA384",
            "encryption_keysize": "256",
        }
        if kind == "unauth":
            attrs = request(sender=f"someone{n % 997}@elsewhere.test", **common)
            return kind, None, None, encode_request(attrs)
        if kind == "dynamic":
            pair = rnd.choice(list(self.plan.dynamic))
            return kind, pair, None, encode_request(authed(pair[0], pair[1], **common))
        if kind == "cold":
            i = self._cold[inst].pop()
            return kind, None, True, encode_request(authed(login(i), own_address(i), **common))
        i = rnd.choice(self._steady)
        if kind in ("owned", "tagged"):
            sender = own_address(i) if rnd.random() < 0.5 else alt_address(i)
            if kind == "tagged":
                local, _, dom = sender.partition("@")
                sender = f"{local}+tag{rnd.randrange(100)}@{dom}"
            return kind, None, True, encode_request(authed(login(i), sender, **common))
        j = rnd.choice(self._steady)
        while j == i:
            j = rnd.choice(self._steady)
        return kind, None, False, encode_request(authed(login(i), own_address(j), **common))

    # -- the loop -------------------------------------------------------------------------
    async def _conn(self, inst: str, c: int, hard_deadline: float) -> None:
        rnd = random.Random(self.seed * 1_000_003 + sum(inst.encode()) * 100 + c)
        interval = self.conns / self.rate
        reader = writer = None
        n = c
        await asyncio.sleep(rnd.random() * interval)  # spread the connections' slots
        while not self._stop.is_set() and time.monotonic() < hard_deadline:
            slot = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.sockets[inst]), self.timeout
                    )
                assert reader is not None and writer is not None
                kind, pair, expected, data = self._make(inst, rnd, n)
                n += self.conns
                t0 = time.monotonic()
                writer.write(data)
                reply = await asyncio.wait_for(reader.readuntil(b"\n\n"), self.timeout)
                t1 = time.monotonic()
                text = reply[len(b"action=") : -2].decode("utf-8", "replace")
                if not reply.startswith(b"action="):
                    text = "(bad framing) " + text
                self.records.append((inst, kind, pair, expected, t0, t1, _answer_kind(text)))
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                self.transport_errors.append((inst, time.monotonic(), repr(e)))
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.1)
            left = slot + interval - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
        if writer is not None:
            writer.close()

    async def _main(self, max_seconds: float) -> None:
        hard = time.monotonic() + max_seconds
        tasks = [
            asyncio.create_task(self._conn(inst, c, hard))
            for inst in self.sockets
            for c in range(self.conns)
        ]
        self._started.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self, max_seconds: float = 300.0) -> None:
        def run() -> None:
            asyncio.run(self._main(max_seconds))

        self._thread = threading.Thread(target=run, name="ownership-load", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- results --------------------------------------------------------------------------
    def classify(self, r: Record) -> tuple[bool, bool]:
        """(wrong, only right because of a change window)."""
        inst, kind, pair, expected, t0, t1, ans = r
        if kind == "unauth":
            return ans != "554", False
        if ans == "451":
            return False, False
        if ans not in ("OK", "553"):
            return True, False
        owned = ans == "OK"
        if pair is not None:
            states, windowed = self.truth.acceptable(pair, inst, t0, t1)
            return owned not in states, windowed and len(states) > 1
        return owned != expected, False

    def select(
        self,
        t_from: float = 0.0,
        t_to: float = float("inf"),
        inst: str | None = None,
        answered_by: float = float("inf"),
    ) -> list[Record]:
        """Records of requests sent in [t_from, t_to) (and answered before answered_by)."""
        return [
            r
            for r in list(self.records)
            if t_from <= r[4] < t_to and r[5] <= answered_by and (inst is None or r[0] == inst)
        ]

    def summary(
        self,
        t_from: float = 0.0,
        t_to: float = float("inf"),
        inst: str | None = None,
        kinds: Sequence[str] = KINDS,
        answered_by: float = float("inf"),
    ) -> Summary:
        s = Summary()
        lat = []
        for r in self.select(t_from, t_to, inst, answered_by):
            if r[1] not in kinds:
                continue
            s.requests += 1
            s.answers[r[6]] += 1
            s.by_kind.setdefault(r[1], collections.Counter())[r[6]] += 1
            wrong, windowed = self.classify(r)
            if wrong:
                s.wrong += 1
                if len(s.wrong_examples) < 10:
                    s.wrong_examples.append(f"{r!r}")
            s.in_window += windowed
            lat.append(r[5] - r[4])
        s.errors = sum(
            1
            for e in list(self.transport_errors)
            if t_from <= e[1] < t_to and (inst is None or e[0] == inst)
        )
        lat.sort()
        s.p50_ms, s.p99_ms = _pct(lat, 0.5) * 1000, _pct(lat, 0.99) * 1000
        s.max_ms = (lat[-1] if lat else 0.0) * 1000
        return s

    def last_answer(self, pair: Pair, inst: str, owned: bool, t_from: float) -> float | None:
        """Reply time of the last answer for `pair` on `inst` sent at or after t_from that
        said owned=`owned` (None if there was none)."""
        want = "OK" if owned else "553"
        times = [r[5] for r in self.select(t_from, inst=inst) if r[2] == pair and r[6] == want]
        return max(times) if times else None

    def first_answer(self, pair: Pair, inst: str, owned: bool, t_from: float) -> float | None:
        want = "OK" if owned else "553"
        times = [r[5] for r in self.select(t_from, inst=inst) if r[2] == pair and r[6] == want]
        return min(times) if times else None
