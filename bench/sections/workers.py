"""Section workers: `policyd serve` with server.workers = 1 against 2 (issue 29), same run.

The throughput section's workload (file directory, 1,000 ranges, the decision log on at INFO to
/dev/null), driven by bench/loadgen.py on CPU 1 (CLIENT_CPU). Servers, in rotating order:

- w1 on CPU 0 / w2 on CPU 0: one process against a supervisor and 2 workers, all pinned to the
  server CPU as the other sections pin (taskset is inherited by the workers): what workers cost
  when there is no spare core;
- w1 on CPU 0+1 / w2 on CPU 0+1: the same allowed on both CPUs, i.e. sharing CPU 1 with the
  load generator: the only way this 2-CPU machine lets a second worker run on its own core.

Server CPU is the supervisor's plus its live children's (from /proc), per request answered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from sections.common import (
    CLIENT_CPU,
    POLICYD_MAIN,
    PY,
    REPO,
    SERVER_CPU,
    Server,
    Workload,
    cpu_seconds,
    free_port,
    loadgen,
    parse_mix,
    server_env,
    write_file_config,
    write_pool,
)

BOTH = f"{SERVER_CPU},{CLIENT_CPU}"


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live children (the workers)."""
    total = cpu_seconds(pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == pid:
                    total += cpu_seconds(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return total


def start(cfg: Path, workers: int, cpus: str, no_uvloop: bool, log: Path | None) -> Server:
    port = free_port()
    cmd = [PY, "-c", POLICYD_MAIN, "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"]
    if cpus != SERVER_CPU:  # (Server pins to SERVER_CPU; taskset inside widens it again)
        cmd = ["taskset", "-c", cpus, *cmd]
    name = f"w{workers} on CPU {cpus.replace(',', '+')}"
    srv = Server(name, cmd, port, log, server_env(no_uvloop))
    time.sleep(1.0 if workers > 1 else 0)  # (the port answers once the first worker serves)
    return srv


def section_workers(args: argparse.Namespace, work: Path) -> dict[str, object]:
    wl = Workload(logins=args.logins, ranges=1000, seed=1, mix=parse_mix(args.mix))
    base = write_file_config(work, wl)
    pool = write_pool(work / "pool.bin", wl.pool(args.pool))
    log = Path(args.server_log) if args.server_log else None
    cfgs = {}
    for n in (1, 2):
        cfgs[n] = work / f"policyd-w{n}.toml"
        cfgs[n].write_text(base.read_text().replace("[server]\n", f"[server]\nworkers = {n}\n", 1))
    servers = [
        start(cfgs[n], n, cpus, args.no_uvloop, log) for cpus in (SERVER_CPU, BOTH) for n in (1, 2)
    ]
    rows = [(f"{c} conns", ["--mode", "persistent", "--conns", str(c)]) for c in (32, 128)] + [
        (
            f"new conn/request ({args.cpr_workers})",
            ["--mode", "per-request", "--conns", str(args.cpr_workers)],
        )
    ]
    common = ["--pool-file", str(pool), "--duration", str(args.duration)]
    common += ["--warmup", str(args.warmup), "--count", str(args.max_requests)]
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        label: {s.name: [] for s in servers} for label, _ in rows
    }
    try:
        for rnd in range(args.rounds):
            for label, row_args in rows:
                k = rnd % len(servers)
                for srv in servers[k:] + servers[:k]:
                    c0 = tree_cpu_seconds(srv.pid)
                    r = loadgen(srv.port, [*row_args, *common])
                    cpu = tree_cpu_seconds(srv.pid) - c0
                    answered = float(r["rps"]) * (float(r["seconds"]) + args.warmup)  # type: ignore[arg-type]
                    results[label][srv.name].append(
                        {
                            "rps": float(r["rps"]),  # type: ignore[arg-type]
                            "p99": float(r["p99_ms"]),  # type: ignore[arg-type]
                            "cpu_us": cpu / answered * 1e6 if answered else float("nan"),
                            # (the server idles while the load generator starts up)
                            "cores": cpu / (float(r["seconds"]) + args.warmup),  # type: ignore[arg-type]
                            "client_cpu": float(r["client_cpu"]),  # type: ignore[arg-type]
                            "errors": float(r["errors"]),  # type: ignore[arg-type]
                        }
                    )
                    if args.verbose:
                        print(f"  round {rnd + 1} {label:>24} {srv.name:16} {r['rps']:>9,.0f}/s")
    finally:
        for srv in servers:
            srv.stop()

    def med(rs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    names = [s.name for s in servers]
    lines = [
        f"server.workers 1 vs 2; load generator on CPU {CLIENT_CPU}; each cell the median of "
        f"{args.rounds} rounds x {args.duration:g} s; ×w1 = median of the per-round ratios to "
        f"w1 on the same CPUs; cores = server CPU s (supervisor + workers) per second of load",
        "",
        "| load | server | req/s | ×w1 | p99 ms | server CPU µs/req | cores | generator CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    table = []
    for label, _ in rows:
        for name in names:
            rs = results[label][name]
            ref = results[label][name.replace("w2", "w1")]
            ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(rs, ref, strict=True))
            row = {"load": label, "server": name, "ratio": ratio}
            row.update({k: med(rs, k) for k in ("rps", "p99", "cpu_us", "cores", "client_cpu")})
            row["errors"] = sum(r["errors"] for r in rs)
            table.append(row)
            lines.append(
                f"| {label} | {name} | {row['rps']:,.0f} | {ratio:.2f} | {row['p99']:.2f} | "
                f"{row['cpu_us']:.1f} | {row['cores']:.2f} | {row['client_cpu']:.0%} |"
            )
    errors = sum(float(t["errors"]) for t in table)  # type: ignore[arg-type]
    lines.append("")
    lines.append(f"load generator errors: {errors:.0f}")
    print("\n".join(lines), flush=True)
    return {"table": table, "repo": str(REPO)}
