"""policyd's own CPU per request on the quota path, in process: 32 connections of a
PolicyServer with transports that only count replies, the same request on each, round after
round; RCPT (quotas on, decided at once) then END-OF-MESSAGE (one check at the shared store).
No load generator and no client sockets: what is left is policyd's Python, its event loop
and the store's socket. Runs the policyd on sys.path, so before/after alternate by tree:

    for i in 1 2 3; do for src in /tmp/before "$PWD"; do
      (cd "$src" && PYTHONPATH="$src" taskset -c 0 "$OLDPWD/.venv/bin/python" \\
        "$OLDPWD/bench/quota_cpu.py" redis://127.0.0.1:PORT /tmp/quota-cpu 600)
    done; done

(a redis-server of your own on PORT, pinned to the other CPU; hold the bench lock). Run from
the tree's root with PYTHONPATH set to it (it imports tests.integration.serverutil)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from policyd.policy.connection import Connection
from policyd.policy.protocol import encode_request
from policyd.policy.server import PolicyServer
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from tests.integration.serverutil import authed, make_config

LIMITS = {
    "messages_per_hour": 10**8,
    "messages_per_day": 10**8,
    "recipients_per_day": 10**8,
    "bytes_per_day": 10**12,
}


class Counting:
    """A transport that counts what is written; sets `done` at `want` writes."""

    def __init__(self, box: dict[str, Any]) -> None:
        self.box = box

    def write(self, data: bytes) -> None:
        box = self.box
        box["n"] += 1
        if box["n"] >= box["want"]:
            box["done"].set()

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


async def per_request(url: str, work: Path, state: str, rounds: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per request of `state` over `rounds` rounds of 32 requests."""
    work.mkdir(parents=True, exist_ok=True)
    quotas = {"enabled": True, "store": url, "limits": LIMITS}
    srv = PolicyServer(PolicyService(build_runtime(make_config(work, {"quotas": quotas}))))
    srv.hub.loop = asyncio.get_running_loop()
    box: dict[str, Any] = {"n": 0, "want": 0, "done": asyncio.Event()}
    conns = []
    for _ in range(32):
        conn = Connection(srv.hub)
        conn.connection_made(Counting(box))  # type: ignore[arg-type]
        conns.append(conn)
    attrs = {"protocol_state": state, "recipient_count": "1", "size": "1000"}
    req = encode_request(authed("alice", "alice@example.org", **attrs))

    async def go(n: int) -> None:
        for _ in range(n):
            box.update(n=0, want=len(conns), done=asyncio.Event())
            for conn in conns:
                conn.data_received(req)
            await box["done"].wait()

    await go(200)  # warm-up (the store's connection, caches)
    cpu, wall = time.process_time(), time.perf_counter()
    await go(rounds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await srv.service.quotas.close()
    n = rounds * len(conns)
    return cpu / n * 1e6, wall / n * 1e6


def main() -> None:
    url, work, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO)  # noqa: SIM115
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    for state in ("RCPT", "END-OF-MESSAGE"):
        cpu, wall = run(per_request(url, work / state, state, rounds))
        sys.stdout.write(f"{state:15s} cpu {cpu:6.1f} µs/req  wall {wall:6.1f} µs/req\n")


if __name__ == "__main__":
    main()
