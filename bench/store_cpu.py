"""The shared quota store's own CPU per message: the redis-server's (or valkey-server's) CPU
time per charge script call, this tree against an older one, in one invocation.

    .venv/bin/python bench/store_cpu.py [--baseline-src /path/to/older/tree] [--rounds 3]

Each tree's RedisStore.charge builds the END-OF-MESSAGE call of N messages (4 limits, a queue
ID, so with the message's marks; --limits bench: the limits of bench/run.py --only quotas, so
high that a login's counters drain between its messages; --limits busy: counters that stay,
the read-and-update path of a login sending all day). The calls are replayed on one private
server on loopback, pipelined in batches (as policyd's ScriptPipe sends them), the trees
alternating round by round; the server's CPU (utime + stime from /proc/PID/stat) around each
replay, divided by the calls. The server is not pinned: run it on a quiet machine (hold
/work/wt/bench.lock where benchmarks share one) and compare the trees of one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent

LIMITS = {
    # name: (period s, limit, cost)
    "bench": (
        ("messages_per_hour", 3600.0, 100_000_000, 1),
        ("messages_per_day", 86400.0, 100_000_000, 1),
        ("recipients_per_day", 86400.0, 100_000_000, 1),
        ("bytes_per_day", 86400.0, 100_000_000_000_000, 1234),
    ),
    "busy": (
        ("messages_per_hour", 1e8, 100_000_000, 1),
        ("messages_per_day", 1e8, 100_000_000, 1),
        ("recipients_per_day", 1e8, 100_000_000, 1),
        ("bytes_per_day", 1e8, 100_000_000_000_000, 1234),
    ),
}


def emit(tree: str, out: str, messages: int, logins: int, limits: str) -> None:
    """(In a child process with `tree` first on sys.path.) The RESP commands of that tree's
    charge calls, and its scripts, pickled to `out`."""
    sys.path.insert(0, tree)
    from policyd.quotas import redis_store
    from policyd.quotas.resp import pack, sha
    from policyd.quotas.store import Charge

    calls: list[bytes] = []
    scripts: set[str] = set()

    class Capture:
        async def call(self, what: str, script: str, keys: list[Any], args: list[Any]) -> Any:
            scripts.add(script)
            calls.append(pack(["EVALSHA", sha(script), len(keys), *keys, *args]))
            return [0]

        async def close(self) -> None:
            return None

    async def build() -> None:
        store = redis_store.RedisStore("redis://127.0.0.1:1/0", 1.0)
        store._pipe = Capture()  # type: ignore[assignment]
        charges = [Charge(n, lim, p, c) for n, p, lim, c in LIMITS[limits]]
        for i in range(messages):
            # (the answer is made up: a tree may want another shape, the command is recorded)
            with contextlib.suppress(Exception):
                await store.charge(f"user{i % logins}@example.org", charges, True, f"4Q{i:08X}")
        await store.close()

    asyncio.run(build())
    Path(out).write_bytes(pickle.dumps((sorted(scripts), calls)))


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replay(sock: socket.socket, pid: int, calls: list[bytes], batch: int) -> float:
    """The server's CPU µs per call over `calls`, sent `batch` at a time."""
    from policyd.quotas.resp import RespError, _Incomplete, parse

    c0 = server_cpu(pid)
    for j in range(0, len(calls), batch):
        chunk = calls[j : j + batch]
        sock.sendall(b"".join(chunk))
        buf, pos, replies = b"", 0, 0
        while replies < len(chunk):
            try:
                value, pos = parse(buf, pos)
            except _Incomplete:
                buf += sock.recv(1 << 20)
                continue
            if isinstance(value, RespError):
                raise SystemExit(f"an error reply: {value}")
            replies += 1
    return (server_cpu(pid) - c0) / len(calls) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline-src", help="an older source tree to compare with")
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--logins", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limits", choices=sorted(LIMITS), default="bench")
    ap.add_argument("--emit", nargs=2, metavar=("TREE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.emit:
        emit(args.emit[0], args.emit[1], args.messages, args.logins, args.limits)
        return
    sys.path.insert(0, str(HERE))
    from policyd.quotas.resp import pack
    from tests.servers.redis import RedisServer

    trees = {"this tree": str(HERE)}
    if args.baseline_src:
        trees["baseline"] = str(Path(args.baseline_src).resolve())
    with tempfile.TemporaryDirectory(prefix="store-cpu-") as tmp:
        loads: dict[str, list[bytes]] = {}
        server = RedisServer(Path(tmp) / "redis").start()
        sock = socket.create_connection(("127.0.0.1", server.port))
        try:
            for name, tree in trees.items():
                out = Path(tmp) / f"{len(loads)}.pickle"
                cmd = [sys.executable, __file__, "--emit", tree, str(out)]
                cmd += ["--messages", str(args.messages), "--logins", str(args.logins)]
                subprocess.run([*cmd, "--limits", args.limits], check=True, cwd=tree)
                scripts, calls = pickle.loads(out.read_bytes())
                for script in scripts:
                    sock.sendall(pack(["SCRIPT", "LOAD", script]))
                    time.sleep(0.05)
                    sock.recv(1000)
                loads[name] = calls
            assert server.proc is not None
            pid = server.proc.pid
            results: dict[str, list[float]] = {name: [] for name in loads}
            for rnd in range(args.rounds):
                order = list(loads) if rnd % 2 == 0 else list(reversed(loads))
                for name in order:
                    sock.sendall(pack(["FLUSHDB"]))
                    sock.recv(100)
                    results[name].append(replay(sock, pid, loads[name], args.batch))
        finally:
            sock.close()
            server.stop()
    print(
        f"redis-server CPU per charge call ({server.binary}; {args.messages:,} messages of "
        f"{args.logins:,} logins, --limits {args.limits}, batches of {args.batch}, "
        f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f})"
    )
    for name, xs in results.items():
        each = " ".join(f"{x:.1f}" for x in xs)
        print(f"  {name:10s} median {statistics.median(xs):5.1f} µs/call  (rounds: {each})")


if __name__ == "__main__":
    main()
