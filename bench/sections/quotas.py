"""Section quotas: the END-OF-MESSAGE request with [quotas] on, against the RCPT request
(issue 28)."""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from sections.common import (
    Workload,
    free_port,
    measure,
    parse_mix,
    start_policyd,
    write_file_config,
    write_pool,
)
from sections.throughput import fmt_rps

QUOTAS_TOML = """\
[quotas]
enabled = true
store = "{store}"
[quotas.limits]
# high enough that nothing is refused: the cost of counting, not of refusing
messages_per_hour = 100000000
messages_per_day = 100000000
recipients_per_day = 100000000
bytes_per_day = 100000000000000
"""


def section_quotas(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """The END-OF-MESSAGE request with quotas on (issue 28): against the RCPT request of the
    same logins with quotas off, at 32 connections; in-memory store and a redis-server (or
    valkey-server) on loopback."""
    from tests.servers.redis import RedisServer, server_binary

    wl = Workload(logins=args.logins, ranges=1000, seed=3, mix=parse_mix("owned=100"))
    cfg_off = write_file_config(work, wl)
    rcpt = wl.pool(args.pool)
    eom = [
        r.replace(b"\nprotocol_state=RCPT\n", b"\nprotocol_state=END-OF-MESSAGE\n").replace(
            b"\nrecipient_count=0\n", b"\nrecipient_count=1\n"
        )
        for r in rcpt
    ]
    assert all(b"END-OF-MESSAGE" in r for r in eom)
    pools = {
        "rcpt": write_pool(work / "rcpt.bin", rcpt),
        "eom": write_pool(work / "eom.bin", eom),
    }
    base = cfg_off.read_text()
    have_redis = shutil.which(server_binary()) is not None
    redis = RedisServer(work / "redis").start() if have_redis else None
    configs = {"off": cfg_off}
    for name, store in (("memory", "none"), ("redis", redis.url if redis else "")):
        if store:
            configs[name] = work / f"policyd-{name}.toml"
            configs[name].write_text(base + "\n" + QUOTAS_TOML.format(store=store))
    log = Path(args.server_log) if args.server_log else None
    servers = {
        n: start_policyd(c, free_port(), args.no_uvloop, log, name=n) for n, c in configs.items()
    }
    cells = [("off", "rcpt"), ("memory", "rcpt"), ("memory", "eom")]
    if redis is not None:
        cells.append(("redis", "eom"))
    common = [
        "--mode",
        "persistent",
        "--conns",
        "32",
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--count",
        str(args.max_requests),
    ]
    results: dict[tuple[str, str], list[dict[str, object]]] = {c: [] for c in cells}
    try:
        for rnd in range(args.rounds):
            k = rnd % len(cells)
            for srv, pool in cells[k:] + cells[:k]:
                r = measure(servers[srv], ["--pool-file", str(pools[pool]), *common])
                results[(srv, pool)].append(r)
    finally:
        for s in servers.values():
            s.stop()
        if redis is not None:
            redis.stop()

    def med(rs: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rs)  # type: ignore[arg-type]

    base_rs = results[("off", "rcpt")]
    lines = [
        "Quotas: END-OF-MESSAGE with quotas on (every limit set, nothing refused) against the "
        f"RCPT request of the same logins with quotas off; 32 connections, median of "
        f"{args.rounds} rounds x {args.duration:g} s; ratio = median of per-round ratios",
        "",
        "| server | request | req/s | p50 ms | p99 ms | **req/s vs RCPT, quotas off** "
        "| added p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    table = []
    for srv, pool in cells:
        rs = results[(srv, pool)]
        ratio = statistics.median(
            float(x["rps"]) / float(y["rps"])  # type: ignore[arg-type]
            for x, y in zip(rs, base_rs, strict=True)
        )
        row = {
            "server": srv,
            "request": pool,
            "rps": med(rs, "rps"),
            "p50": med(rs, "p50_ms"),
            "p99": med(rs, "p99_ms"),
            "ratio": ratio,
            "added_p99": med(rs, "p99_ms") - med(base_rs, "p99_ms"),
            "errors": sum(int(r["errors"]) for r in rs),  # type: ignore[call-overload]
            "actions": rs[-1]["actions"],
        }
        table.append(row)
        lines.append(
            f"| quotas {srv} | {pool.upper()} | {fmt_rps(row['rps'])} | {row['p50']:.2f} | "
            f"{row['p99']:.2f} | **{ratio:.2f}** | {row['added_p99']:+.2f} |"
        )
    if redis is None:
        lines.append("\n(no redis-server/valkey-server installed: the shared store row is missing)")
    print("\n".join(lines), flush=True)
    return {"table": table}
