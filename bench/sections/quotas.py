"""Section quotas: the END-OF-MESSAGE request with [quotas] on, against the RCPT request
(issue 28)."""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from sections.common import (
    CLIENT_CPU,
    SERVER_CPU,
    Workload,
    cpu_seconds,
    free_port,
    measure,
    parse_mix,
    pinned,
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
    """The END-OF-MESSAGE request with quotas on (issue 28), per store (in memory; a
    redis-server or valkey-server on loopback), against the RCPT request of the same logins
    with quotas off, in the same run: throughput at 32 connections (closed loop, saturated)
    and at each further count of `--quota-conns` (128: enough requests in flight that
    policyd's CPU, not the round trips of three processes on two CPUs, bounds the rate),
    and the p99 added per message at 32 connections paced at `--paced-rate` requests/s in all
    (not saturated: the latency a message gains, not a queue). policyd pinned to the server
    CPU, the load generator to the client CPU, the redis server as `--quota-store-cpu` says
    (server: it costs the quota path its CPU too; client: next to the load generator; none:
    not pinned). Cells rotate round by round; ratios and added p99 are the medians of the
    per-round values."""
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
    cpu = {"server": SERVER_CPU, "client": CLIENT_CPU}.get(args.quota_store_cpu)
    redis = (
        RedisServer(work / "redis", wrap=(lambda c: pinned(cpu, c)) if cpu else None).start()
        if have_redis
        else None
    )
    configs = {"off": cfg_off}
    for name, store in (("memory", "none"), ("redis", redis.url if redis else "")):
        if store:
            configs[name] = work / f"policyd-{name}.toml"
            configs[name].write_text(base + "\n" + QUOTAS_TOML.format(store=store))
    log = Path(args.server_log) if args.server_log else None
    servers = {
        n: start_policyd(c, free_port(), args.no_uvloop, log, name=n) for n, c in configs.items()
    }
    stores = ["memory", "redis"] if redis is not None else ["memory"]
    if args.baseline_src:  # (before/after: the same stores with policyd from an older tree)
        base_src = Path(args.baseline_src).resolve()
        for st in list(stores):
            servers[f"{st} before"] = start_policyd(
                configs[st], free_port(), args.no_uvloop, log, src=base_src, name=f"{st}-before"
            )
            stores.append(f"{st} before")
    saturated = [("off", "rcpt"), ("memory", "rcpt"), *((st, "eom") for st in stores)]
    # (closed loops: "saturated" at 32 connections, "saturated N" at each further count)
    conns = [int(n) for n in str(args.quota_conns).split(",") if n.strip()]
    kinds = {"saturated" if n == 32 else f"saturated {n}": n for n in conns}
    cells: list[tuple[str, str, str]] = [
        (srv, pool, kind) for kind in kinds for srv, pool in saturated
    ]
    if args.paced_rate:
        cells += [("off", "rcpt", "paced"), *((st, "eom", "paced") for st in stores)]
    common = ["--mode", "persistent", "--duration", str(args.duration)]
    common += ["--warmup", str(args.warmup), "--count", str(args.max_requests)]
    load = {kind: [*common, "--conns", str(n)] for kind, n in kinds.items()}
    load["paced"] = [*common, "--conns", "32", "--rate", str(args.paced_rate)]
    results: dict[tuple[str, str, str], list[dict[str, object]]] = {c: [] for c in cells}
    try:
        for rnd in range(args.rounds):
            k = rnd % len(cells)
            for srv, pool, kind in cells[k:] + cells[:k]:
                r0 = cpu_seconds(redis.proc.pid) if redis and redis.proc else 0.0
                r = measure(servers[srv], ["--pool-file", str(pools[pool]), *load[kind]])
                # (the store's own CPU, sampled like the server's around the load run)
                r1 = cpu_seconds(redis.proc.pid) if redis and redis.proc else 0.0
                r["redis_cpu_s"] = r1 - r0
                results[(srv, pool, kind)].append(r)
    finally:
        for s in servers.values():
            s.stop()
        if redis is not None:
            redis.stop()

    def med(rs: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rs)  # type: ignore[arg-type]

    def per_round(cell: tuple[str, str, str], base: tuple[str, str, str], f: Any) -> float:
        return statistics.median(f(x, y) for x, y in zip(results[cell], results[base], strict=True))

    def cpu_us(r: dict[str, object], key: str = "server_cpu_s") -> float:
        # (sampled around the whole load run: the warm-up's share scaled out)
        cpu = float(r[key])  # type: ignore[arg-type]
        n = int(r["requests"])  # type: ignore[call-overload]
        return cpu * args.duration / (args.duration + args.warmup) / max(1, n) * 1e6

    lines = [
        "Quotas: END-OF-MESSAGE with quotas on (every limit set, nothing refused) against the "
        f"RCPT request of the same logins with quotas off; saturated (closed loop) at 32 "
        f'connections (and "saturated N" at N), paced at {args.paced_rate:,.0f} req/s in all '
        f"over 32; median of {args.rounds} rounds "
        f"x {args.duration:g} s; ratio and added p99 = medians of the per-round values; the "
        f"store pinned: {args.quota_store_cpu}",
        "",
        "| load | server | request | req/s | server CPU µs/req | redis CPU µs/req | p50 ms "
        "| p99 ms | **req/s vs RCPT, quotas off** | **added p99 ms** |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table = []
    for cell in cells:
        srv, pool, kind = cell
        rs = results[cell]
        base_cell = ("off", "rcpt", kind)
        ratio = per_round(cell, base_cell, lambda x, y: float(x["rps"]) / float(y["rps"]))
        added = per_round(cell, base_cell, lambda x, y: float(x["p99_ms"]) - float(y["p99_ms"]))
        row = {
            "load": kind,
            "server": srv,
            "request": pool,
            "rps": med(rs, "rps"),
            "cpu_us": statistics.median(cpu_us(r) for r in rs),
            "redis_cpu_us": statistics.median(cpu_us(r, "redis_cpu_s") for r in rs),
            "p50": med(rs, "p50_ms"),
            "p99": med(rs, "p99_ms"),
            "ratio": ratio,
            "added_p99": added,
            "errors": sum(int(r["errors"]) for r in rs),  # type: ignore[call-overload]
            "actions": rs[-1]["actions"],
        }
        table.append(row)
        # (the redis-server's CPU per request, where the store is the server's: elsewhere it
        # only idles)
        store_cpu = f"{row['redis_cpu_us']:.1f}" if srv.startswith("redis") else "-"
        lines.append(
            f"| {kind} | quotas {srv} | {pool.upper()} | {fmt_rps(row['rps'])} | "
            f"{row['cpu_us']:.1f} | {store_cpu} | {row['p50']:.2f} | {row['p99']:.2f} | "
            f"**{ratio:.2f}** | "
            f"**{added:+.2f}** |"
        )
    if redis is None:
        lines.append(
            "\n(no redis-server/valkey-server installed: the shared store rows are missing)"
        )
    print("\n".join(lines), flush=True)
    return {"table": table}
