"""Section throughput: policyd against the bare (and parse-only) responder, pure and compiled."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sections.common import (
    CLIENT_CPU,
    REPO,
    SERVER_CPU,
    Workload,
    build_of,
    compiled_tree,
    free_port,
    measure,
    parse_mix,
    rss_kib,
    start_bare,
    start_policyd,
    uvloop_available,
    write_file_config,
    write_pool,
)

# --------------------------------------------------------------------------------------------
# section: throughput


def _short(row: str) -> str:
    if "paced" in row:
        return "paced"
    if row.startswith("new conn"):
        return "conn/request"
    return row.split(" ")[0]


def fmt_rps(x: float) -> str:
    return f"{x:,.0f}"


def section_throughput(args: argparse.Namespace, work: Path) -> dict[str, object]:
    wl = Workload(logins=args.logins, ranges=1000, seed=1, mix=parse_mix(args.mix))
    cfg = write_file_config(work, wl)
    pool = write_pool(work / "pool.bin", wl.pool(args.pool))
    log = Path(args.server_log) if args.server_log else None
    builds = {"policyd": build_of(REPO)}
    if args.compiled:
        src = compiled_tree(args.compiled)
        builds["compiled"] = build_of(src)
        if not builds["compiled"].startswith("compiled"):  # no silent fallback in the table
            raise SystemExit(f"--compiled: {src} runs {builds['compiled']!r}")
    if args.baseline_src:
        builds["before"] = build_of(Path(args.baseline_src).resolve())
    print("builds: " + "; ".join(f"{n}: {b}" for n, b in builds.items()), flush=True)
    servers = [
        start_policyd(cfg, free_port(), args.no_uvloop, log),
        start_bare(free_port(), args.no_uvloop, log),
    ]
    if args.compiled:
        servers.append(start_policyd(cfg, free_port(), args.no_uvloop, log, src, "compiled"))
    if args.ceiling:
        servers.append(start_bare(free_port(), args.no_uvloop, log, parse=True))
    if args.baseline_src:
        servers.append(
            start_policyd(
                cfg,
                free_port(),
                args.no_uvloop,
                log,
                src=Path(args.baseline_src).resolve(),
                name="before",
            )
        )
    names = [srv.name for srv in servers]
    rows: list[tuple[str, list[str]]] = [
        (f"{c} conn{'s' if c > 1 else ''}", ["--mode", "persistent", "--conns", str(c)])
        for c in args.conns
    ]
    if args.paced_rate:
        rows.append(
            (
                f"32 conns paced, {args.paced_rate:,.0f} req/s in all",
                ["--mode", "persistent", "--conns", "32", "--rate", str(args.paced_rate)],
            )
        )
    if args.cpr_workers:
        rows.append(
            (
                f"new conn/request ({args.cpr_workers} workers)",
                ["--mode", "per-request", "--conns", str(args.cpr_workers)],
            )
        )
    common = [
        "--pool-file",
        str(pool),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--count",
        str(args.max_requests),
    ]
    results: dict[str, dict[str, list[dict[str, object]]]] = {
        label: {n: [] for n in names} for label, _ in rows
    }
    rss: dict[str, float] = {}
    try:
        for rnd in range(args.rounds):
            for label, row_args in rows:
                # rotate the order every round: no server always runs first (or last)
                k = rnd % len(servers)
                for srv in servers[k:] + servers[:k]:
                    r = measure(srv, [*row_args, *common])
                    results[label][srv.name].append(r)
                    if args.verbose:
                        print(
                            f"  round {rnd + 1} {label:>28} {srv.name:8} {r['rps']:>9,.0f}/s "
                            f"p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} ms "
                            f"client cpu {r['client_cpu']:.0%}",
                            flush=True,
                        )
        rss = {srv.name: rss_kib(srv.pid) / 1024 for srv in servers}
    finally:
        for srv in servers:
            srv.stop()

    def med(rs: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rs)  # type: ignore[arg-type]

    def cpu_per_req(rs: list[dict[str, object]]) -> float:
        # server CPU seconds over the whole load generator run (warm-up included) / requests
        # answered in that time (estimated from the measured rate)
        vals = []
        for r in rs:
            total = float(r["rps"]) * (float(r["seconds"]) + args.warmup)  # type: ignore[arg-type]
            if total > 0:
                vals.append(float(r["server_cpu_s"]) / total * 1e6)  # type: ignore[arg-type]
        return statistics.median(vals) if vals else float("nan")

    table = []
    for label, _ in rows:
        res = results[label]
        p, b = res["policyd"], res["bare"]
        ratios = [float(x["rps"]) / float(y["rps"]) for x, y in zip(p, b, strict=True)]  # type: ignore[arg-type]
        row: dict[str, object] = {
            "row": label,
            "policyd_rps": med(p, "rps"),
            "policyd_p50": med(p, "p50_ms"),
            "policyd_p99": med(p, "p99_ms"),
            "bare_rps": med(b, "rps"),
            "bare_p50": med(b, "p50_ms"),
            "bare_p99": med(b, "p99_ms"),
            "ratio": statistics.median(ratios),
            "policyd_cpu_us": cpu_per_req(p),
            "bare_cpu_us": cpu_per_req(b),
            "client_cpu_policyd": med(p, "client_cpu"),
            "client_cpu_bare": med(b, "client_cpu"),
            "errors": sum(int(r["errors"]) for rs in res.values() for r in rs),  # type: ignore[call-overload]
            "actions": p[-1]["actions"],
        }
        # the parse-only ceiling, the --baseline-src tree, the compiled build
        for other in ("parse", "before", "compiled"):
            if other in res:
                rs = res[other]
                row[f"{other}_rps"] = med(rs, "rps")
                row[f"{other}_p50"] = med(rs, "p50_ms")
                row[f"{other}_p99"] = med(rs, "p99_ms")
                row[f"{other}_cpu_us"] = cpu_per_req(rs)
                row[f"{other}_ratio"] = statistics.median(
                    float(x["rps"]) / float(y["rps"])
                    for x, y in zip(rs, b, strict=True)  # type: ignore[arg-type]
                )
        if "compiled" in res:
            row["compiled_vs_pure"] = statistics.median(
                float(x["rps"]) / float(y["rps"])  # type: ignore[arg-type]
                for x, y in zip(res["compiled"], p, strict=True)
            )
        table.append(row)
    loop = "asyncio" if args.no_uvloop or not uvloop_available() else "uvloop"
    client_loop = results[rows[0][0]]["policyd"][0]["client_loop"]
    lines = [
        f"Throughput: policyd vs bare responder; server event loop: {loop} (both); load "
        f"generator: {client_loop}; servers on CPU {SERVER_CPU}, load generator on CPU "
        f"{CLIENT_CPU}; each cell the median of {args.rounds} rounds x {args.duration:g} s "
        f"(after {args.warmup:g} s warm-up); ratio = median of the per-round ratios",
        "",
        "| connections | policyd req/s | p50 ms | p99 ms | bare req/s | p50 ms | p99 ms "
        "| **policyd / bare** | server CPU µs/req policyd / bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in table:
        lines.append(
            f"| {t['row']} | {fmt_rps(t['policyd_rps'])} | {t['policyd_p50']:.2f} | "  # type: ignore[arg-type]
            f"{t['policyd_p99']:.2f} | {fmt_rps(t['bare_rps'])} | {t['bare_p50']:.2f} | "  # type: ignore[arg-type]
            f"{t['bare_p99']:.2f} | **{t['ratio']:.2f}** | {t['policyd_cpu_us']:.1f} / "
            f"{t['bare_cpu_us']:.1f} |"
        )
    if args.ceiling:
        lines += [
            "",
            "Ceiling: `bench/bare_responder.py --parse` in the same rounds: the bare responder "
            "plus reading each request into a dict of its attributes (the fastest pure-Python "
            "way, no validation) - no decision, no log line, the least a Python policy daemon "
            "must do:",
            "",
            "| connections | parse-only req/s | p99 ms | **parse-only / bare** | CPU µs/req "
            "| policyd / parse-only |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in table:
            lines.append(
                f"| {t['row']} | {fmt_rps(t['parse_rps'])} | {t['parse_p99']:.2f} | "  # type: ignore[arg-type]
                f"**{t['parse_ratio']:.2f}** | {t['parse_cpu_us']:.1f} | "
                f"{float(t['policyd_rps']) / float(t['parse_rps']):.2f} |"  # type: ignore[arg-type]
            )
    if args.compiled:
        lines += [
            "",
            "Three builds in the same rounds: policyd pure Python, policyd compiled (mypyc), "
            "the bare responder; ratios = median of the per-round ratios:",
            "",
            "| connections | pure req/s | p50 / p99 ms | CPU µs/req | compiled req/s "
            "| p50 / p99 ms | CPU µs/req | bare req/s | p50 / p99 ms | CPU µs/req "
            "| pure / bare | **compiled / bare** | compiled / pure |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in table:
            lines.append(
                f"| {t['row']} | {fmt_rps(t['policyd_rps'])} | "  # type: ignore[arg-type]
                f"{t['policyd_p50']:.2f} / {t['policyd_p99']:.2f} | {t['policyd_cpu_us']:.1f} | "
                f"{fmt_rps(t['compiled_rps'])} | "  # type: ignore[arg-type]
                f"{t['compiled_p50']:.2f} / {t['compiled_p99']:.2f} | "
                f"{t['compiled_cpu_us']:.1f} | {fmt_rps(t['bare_rps'])} | "  # type: ignore[arg-type]
                f"{t['bare_p50']:.2f} / {t['bare_p99']:.2f} | {t['bare_cpu_us']:.1f} | "
                f"{t['ratio']:.2f} | **{t['compiled_ratio']:.2f}** | "
                f"{t['compiled_vs_pure']:.2f} |"
            )
    if args.baseline_src:
        lines += [
            "",
            f"Before/after: policyd from {args.baseline_src} ('before') measured in the same "
            "rounds:",
            "",
            "| connections | before req/s | before p99 ms | before / bare | before CPU µs/req "
            "| after req/s | after p99 ms | after / bare | after CPU µs/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in table:
            lines.append(
                f"| {t['row']} | {fmt_rps(t['before_rps'])} | {t['before_p99']:.2f} | "  # type: ignore[arg-type]
                f"{t['before_ratio']:.2f} | {t['before_cpu_us']:.1f} | "
                f"{fmt_rps(t['policyd_rps'])} | "  # type: ignore[arg-type]
                f"{t['policyd_p99']:.2f} | {t['ratio']:.2f} | {t['policyd_cpu_us']:.1f} |"
            )
    errors = sum(int(t["errors"]) for t in table)  # type: ignore[call-overload]
    target = next((t for t in table if t["row"] == "32 conns"), None)
    lines.append("")
    if target is not None:
        ok_ratio = float(target["ratio"]) >= 0.6  # type: ignore[arg-type]
        ok_p99 = float(target["policyd_p99"]) <= 2.0  # type: ignore[arg-type]
        lines.append(
            f"Target at 32 connections: policyd >= 0.6 x bare: {target['ratio']:.2f} "
            f"({'met' if ok_ratio else 'NOT met'}); p99 <= 2 ms: {target['policyd_p99']:.2f} ms "
            f"({'met' if ok_p99 else 'NOT met'})."
        )
        if args.compiled:
            c_ratio = float(target["compiled_ratio"])  # type: ignore[arg-type]
            c_p99 = float(target["compiled_p99"])  # type: ignore[arg-type]
            lines.append(
                f"Compiled build at 32 connections: >= 0.6 x bare: {c_ratio:.2f} "
                f"({'met' if c_ratio >= 0.6 else 'NOT met'}); p99 <= 1.5 ms: {c_p99:.2f} ms "
                f"({'met' if c_p99 <= 1.5 else 'NOT met'})."
            )
    lines.append(
        f"policyd answers (last round, {(target or table[0])['row']}): "
        f"{(target or table[0])['actions']}; client errors: {errors}; RSS after the runs: "
        + ", ".join(f"{n} {v:.1f} MiB" for n, v in rss.items())
        + "; load generator CPU share (median, policyd/bare): "
        + ", ".join(
            f"{_short(str(t['row']))}: {t['client_cpu_policyd']:.0%}/{t['client_cpu_bare']:.0%}"
            for t in table
        )
    )
    text = "\n".join(lines)
    print(text, flush=True)
    return {"table": table, "text": text}
