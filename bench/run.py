#!/usr/bin/env python3
"""policyd benchmark: one script, one run, everything measured on the same machine.

    .venv/bin/python bench/run.py                 # throughput + ranges + load + cold LDAP (~4 min)
    .venv/bin/python bench/run.py --no-uvloop     # the same with plain asyncio servers
    .venv/bin/python bench/run.py --memory        # + RSS after 1,000,000 requests (~10 min)
    .venv/bin/python bench/run.py --only throughput,ranges,load,ldap,memory,profile,quotas
    .venv/bin/python bench/run.py --baseline-src DIR   # + policyd from DIR/policyd: before/after
    .venv/bin/python bench/run.py --compiled      # + the compiled build (scripts/build-compiled)

Results and how to read them: bench/RESULTS.md.

Sections:

throughput
    policyd (``policyd serve``, embedded file directory with many logins, 1,000 allocated
    ranges, decision log on at INFO with stderr to /dev/null) and bench/bare_responder.py
    (reads a whole request, answers ``action=DUNNO``), both pinned to CPU 0, driven by
    bench/loadgen.py pinned to CPU 1 with persistent ping-pong connections (1, 8, 32, 128),
    one row of 32 connections paced at 1,000 requests/s in all (latency when not saturated)
    and one connection-per-request row. The order of the servers rotates every round; each
    cell is the median over the rounds. Also printed: server CPU time per request (from
    /proc, robust against other load on the machine) and the load generator's CPU share.
    With --compiled, the compiled build (the hot path compiled with mypyc, from the tree that
    scripts/build-compiled makes, or a given DIR) runs in the same rounds as a third column;
    each policyd's build is checked before the run (policyd.build.describe()).
ranges
    Networks.load and Networks.lookup for 1,000 / 100,000 / 1,000,000 random mixed
    IPv4/IPv6 ranges (CIDRs, FIRST-LAST ranges, single addresses), each in a fresh process
    pinned to CPU 0: load time, µs per lookup, RSS.
load
    1,000,000 ranges (70% IPv4 /16-/32, 30% IPv6 /32-/64, random order, deterministic seed):
    ``policyd config-check`` from process start to exit against a process that only parses
    the same lines with the stdlib's ``ipaddress.ip_network``, alternating, pinned to CPU 0;
    the ratio per round, the peak RSS of both, and lookups on the same file (µs, RSS).
ldap
    Cold LDAP path: a private slapd (tests/servers/slapd.py) with generated users; unique
    logins through policyd's LdapDirectory (direct calls, and the whole server driven by the
    load generator) against a bare ldap3 SAFE_SYNC search loop doing the same searches.
memory
    RSS of ``policyd serve`` with the LDAP backend after 1,000,000 requests over 100,000
    distinct logins, with cache.max_entries bounding the cache (file directory when slapd or
    the LDAP backend is not available; then the RSS is mostly the directory).
profile
    py-spy on policyd serve under 32 connections: self and inclusive time per function.
quotas
    The END-OF-MESSAGE request with [quotas] on (in-memory store, and a redis-server on
    loopback from tests/servers/redis.py) against the RCPT request of the same logins with
    quotas off, 32 connections: req/s ratio and added p99 (issue 28). Not in the default run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from loadgen import Workload, parse_mix  # noqa: E402

PY = sys.executable
SERVER_CPU = "0"
CLIENT_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# processes


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def pinned(cpu: str, cmd: Sequence[str]) -> list[str]:
    if shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", cpu, *cmd]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class Server:
    """A server process pinned to the server CPU; stopped by PID."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        log: Path | None,
        env: dict[str, str],
        cwd: Path = REPO,
    ):
        self.name = name
        self.port = port
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            pinned(SERVER_CPU, cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd=cwd,
        )
        if log:
            out.close()  # type: ignore[union-attr]
        try:
            wait_port(port, self.proc)
        except Exception:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def server_env(no_uvloop: bool, src: Path = REPO) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    if no_uvloop:
        env["POLICYD_NO_UVLOOP"] = "1"
    else:
        env.pop("POLICYD_NO_UVLOOP", None)
    return env


# `policyd serve` exactly as the CLI runs it; with --no-uvloop, uvloop is made unimportable
# first (cli._run then falls back to asyncio.run), and the loop in use is printed on stderr.
POLICYD_MAIN = textwrap.dedent("""\
    import os, sys
    if os.environ.get("POLICYD_NO_UVLOOP"):
        sys.modules["uvloop"] = None
    try:
        import uvloop
        kind = "uvloop"
    except ImportError:
        kind = "asyncio"
    print(f"policyd-bench: event loop {kind}", file=sys.stderr, flush=True)
    from policyd.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def start_policyd(
    config: Path,
    port: int,
    no_uvloop: bool,
    log: Path | None,
    src: Path = REPO,
    name: str = "policyd",
) -> Server:
    """`policyd serve` from the source tree `src` (default: this checkout)."""
    cmd = [
        PY,
        "-c",
        POLICYD_MAIN,
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    return Server(name, cmd, port, log, server_env(no_uvloop, src), cwd=src)


def build_of(src: Path) -> str:
    """Which build `policyd serve` from `src` runs (policyd.build.describe(); a tree from
    before policyd/build.py existed is pure)."""
    if not (src / "policyd" / "build.py").exists():
        # (asked inside, this checkout's editable install would answer for the other tree)
        return "pure Python"
    code = (
        "try:\n from policyd.build import describe\nexcept ImportError:\n"
        " print('pure Python')\nelse:\n print(describe())"
    )
    p = subprocess.run(
        [PY, "-c", code],
        capture_output=True,
        text=True,
        env=server_env(False, src),
        cwd=src,
        timeout=60,
        check=True,
    )
    return p.stdout.strip()


def compiled_tree(arg: str) -> Path:
    """--compiled: the given tree, or the one scripts/build-compiled makes of this checkout."""
    if arg != "build":
        return Path(arg).resolve()
    p = subprocess.run(
        [str(REPO / "scripts" / "build-compiled")], capture_output=True, text=True, cwd=REPO
    )
    if p.returncode != 0:
        raise SystemExit(f"scripts/build-compiled failed:\n{p.stderr[-2000:]}")
    return Path(p.stdout.strip().splitlines()[-1])


def start_bare(port: int, no_uvloop: bool, log: Path | None, parse: bool = False) -> Server:
    cmd = [PY, str(BENCH / "bare_responder.py"), "--listen", f"127.0.0.1:{port}"]
    if no_uvloop:
        cmd.append("--no-uvloop")
    if parse:
        cmd.append("--parse")
    return Server("parse" if parse else "bare", cmd, port, log, server_env(no_uvloop))


def loadgen(port: int, args: Sequence[str], timeout: float = 600) -> dict[str, object]:
    cmd = pinned(CLIENT_CPU, [PY, str(BENCH / "loadgen.py"), "--port", str(port), *args])
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"loadgen failed: {p.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def measure(server: Server, args: Sequence[str]) -> dict[str, object]:
    """One load run; adds the server's CPU seconds per request (from /proc)."""
    c0 = cpu_seconds(server.pid)
    t0 = time.monotonic()
    r = loadgen(server.port, args)
    wall = time.monotonic() - t0
    c1 = cpu_seconds(server.pid)
    # CPU is sampled around the whole loadgen process (start-up and warm-up included); the
    # server is idle while the load generator starts, so scale by the measured share.
    r["server_cpu_s"] = c1 - c0
    r["wall_s"] = wall
    return r


# --------------------------------------------------------------------------------------------
# configs


def write_file_config(work: Path, wl: Workload) -> Path:
    (work / "ranges.txt").write_text("\n".join(wl.range_lines()) + "\n")
    (work / "senders.txt").write_text("\n".join(wl.directory_lines()) + "\n")
    cfg = work / "policyd.toml"
    cfg.write_text(
        PROFILES_TOML.format(directory='backend = "file"\nfile = "senders.txt"', extra="")
    )
    return cfg


PROFILES_TOML = """\
# written by bench/run.py
[server]
max_connections = 1000

[logging]
level = "info"
target = "stderr"

[networks]
files = ["ranges.txt"]

[directory]
{directory}

{extra}

[profiles.submission]
role = "submission"
mode = "enforce"
check_state = "RCPT"
ports = [587]
accept_action = "OK"
protect_local_senders = false

[profiles.mx]
role = "mx"
mode = "enforce"
check_state = "RCPT"
ports = [25]
accept_action = "OK"
protect_local_senders = true
"""


def write_pool(path: Path, requests: list[bytes]) -> Path:
    path.write_bytes(b"".join(requests))
    return path


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


# --------------------------------------------------------------------------------------------
# section: ranges


def random_range_lines(n: int, seed: int = 7, firsts: list[str] | None = None) -> list[str]:
    """n random range lines, as in docs (libraries.md) §1: 45% IPv4 CIDRs (/16-/32), 35% IPv6
    CIDRs (/32-/128, inside 2000::/3), 10% IPv4 and 10% IPv6 FIRST-LAST ranges (up to 4,096
    and 2^20 addresses); every 10th line with a label and domains=. `firsts` collects each
    range's first address (a guaranteed hit)."""
    rnd = random.Random(seed)
    out = []
    ntop = socket.inet_ntop
    v4 = socket.AF_INET
    v6 = socket.AF_INET6
    for i in range(n):
        x = rnd.random()
        if x < 0.45:
            plen = rnd.randint(16, 32)
            v = rnd.getrandbits(32) >> (32 - plen) << (32 - plen)
            first = ntop(v4, v.to_bytes(4, "big"))
            pat = f"{first}/{plen}"
        elif x < 0.80:
            plen = rnd.randint(32, 128)
            v = (1 << 125 | rnd.getrandbits(125)) >> (128 - plen) << (128 - plen)
            first = ntop(v6, v.to_bytes(16, "big"))
            pat = f"{first}/{plen}"
        elif x < 0.90:
            a = rnd.getrandbits(32)
            b = min(a + rnd.randint(0, 4095), (1 << 32) - 1)
            first = ntop(v4, a.to_bytes(4, "big"))
            pat = f"{first}-{ntop(v4, b.to_bytes(4, 'big'))}"
        else:
            a = 1 << 125 | rnd.getrandbits(125)
            b = a + rnd.randint(0, 1 << 20)
            first = ntop(v6, a.to_bytes(16, "big"))
            pat = f"{first}-{ntop(v6, b.to_bytes(16, 'big'))}"
        if firsts is not None:
            firsts.append(first)
        if i % 10 == 0:
            out.append(f"{pat} r{i} domains=example.org")
        else:
            out.append(pat)
    return out


def lookup_addresses(firsts: list[str], count: int, seed: int = 11) -> list[str]:
    """25% IPv4 hits, 25% IPv6 hits (range starts), 25% random IPv4, 15% random IPv6 in
    2000::/3 (mostly misses), 10% ::ffff:-mapped random IPv4."""
    rnd = random.Random(seed)
    firsts4 = [a for a in firsts if ":" not in a]
    firsts6 = [a for a in firsts if ":" in a]
    ntop = socket.inet_ntop
    out = []
    for _ in range(count):
        x = rnd.random()
        if x < 0.25 and firsts4:
            out.append(rnd.choice(firsts4))
        elif x < 0.5 and firsts6:
            out.append(rnd.choice(firsts6))
        elif x < 0.75:
            out.append(ntop(socket.AF_INET, rnd.getrandbits(32).to_bytes(4, "big")))
        elif x < 0.9:
            out.append(ntop(socket.AF_INET6, (1 << 125 | rnd.getrandbits(125)).to_bytes(16, "big")))
        else:
            out.append("::ffff:" + ntop(socket.AF_INET, rnd.getrandbits(32).to_bytes(4, "big")))
    return out


def ranges_child(ranges_file: str, lookups_file: str) -> None:
    """Runs in a fresh process: load the range file, time lookups, report JSON."""
    import gc

    from policyd.networks import Networks

    addrs = Path(lookups_file).read_text().split()
    v6_misses = [a for a in addrs if ":" in a and not a.startswith("::ffff:")]
    gc.collect()
    rss0 = rss_kib(os.getpid())
    t0 = time.perf_counter()
    net = Networks.load([ranges_file])
    load_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_kib(os.getpid())
    lookup = net.lookup
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for a in addrs:
            lookup(a)
        best = min(best, (time.perf_counter() - t0) / len(addrs))
    hits = sum(1 for a in addrs if lookup(a) is not None)
    v6_misses = [a for a in v6_misses if lookup(a) is None]
    best6 = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for a in v6_misses:
            lookup(a)
        best6 = min(best6, (time.perf_counter() - t0) / max(1, len(v6_misses)))
    print(
        json.dumps(
            {
                "load_s": load_s,
                "lookup_us": best * 1e6,
                "v6_miss_us": best6 * 1e6,
                "hit_share": hits / len(addrs),
                "rss_before_mib": rss0 / 1024,
                "rss_after_mib": rss1 / 1024,
                "summary": net.summary(),
            }
        )
    )


def section_ranges(args: argparse.Namespace, work: Path) -> dict[str, object]:
    rows = []
    for n in args.range_sizes:
        firsts: list[str] = []
        t0 = time.monotonic()
        ranges_file = work / f"ranges-{n}.txt"
        ranges_file.write_text("\n".join(random_range_lines(n, firsts=firsts)) + "\n")
        lookups_file = work / f"lookups-{n}.txt"
        lookups_file.write_text("\n".join(lookup_addresses(firsts, 100_000)) + "\n")
        del firsts
        gen_s = time.monotonic() - t0
        cmd = pinned(
            SERVER_CPU,
            [PY, str(Path(__file__).resolve()), "--_ranges-child", f"{ranges_file}:{lookups_file}"],
        )
        p = subprocess.run(cmd, capture_output=True, timeout=600, cwd=REPO, env=server_env(False))
        if p.returncode != 0:
            raise RuntimeError(p.stderr.decode(errors="replace")[-2000:])
        r = json.loads(p.stdout.decode().strip().splitlines()[-1])
        r["n"] = n
        r["file_mib"] = ranges_file.stat().st_size / 2**20
        ranges_file.unlink()
        lookups_file.unlink()
        if args.verbose:
            print(f"  (generated in {gen_s:.1f} s)", flush=True)
        rows.append(r)
        if args.verbose:
            print(f"  ranges {n:>9,}: {r}", flush=True)
    lines = [
        f"Ranges scaling: Networks.load and Networks.lookup, a fresh process per size pinned to "
        f"CPU {SERVER_CPU}; random ranges as in libraries.md §1 (45% v4 CIDRs /16-/32, 35% v6 "
        f"CIDRs /32-/128, 10% v4 and 10% v6 FIRST-LAST); 100,000 lookups (50% range starts, "
        f"40% random v4/v6, 10% ::ffff:-mapped), best of 5 passes",
        "",
        "| ranges | file | load s | lookup µs, mixed (hits) | lookup µs, IPv6 misses "
        "| RSS before → after load |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['file_mib']:.1f} MiB | {r['load_s']:.2f} | {r['lookup_us']:.2f} "
            f"({r['hit_share']:.0%}) | {r['v6_miss_us']:.2f} | {r['rss_before_mib']:.0f} → "
            f"{r['rss_after_mib']:.0f} MiB (+{r['rss_after_mib'] - r['rss_before_mib']:.0f}) |"
        )
    lines += ["", "Targets: 1M load < 10 s; lookup < 5 µs and flat."]
    text = "\n".join(lines)
    print(text, flush=True)
    return {"rows": rows, "text": text}


# --------------------------------------------------------------------------------------------
# section: load (1M ranges: policyd config-check against the stdlib merely parsing the lines)


def load_range_lines(n: int, seed: int = 17, firsts: list[str] | None = None) -> list[str]:
    """n plain CIDR lines in random order: 70% IPv4 /16-/32, 30% IPv6 /32-/64 (inside
    2000::/3). `firsts` collects each range's first address (a guaranteed hit)."""
    rnd = random.Random(seed)
    ntop = socket.inet_ntop
    out = []
    for _ in range(n):
        if rnd.random() < 0.7:
            plen = rnd.randint(16, 32)
            v = rnd.getrandbits(32) >> (32 - plen) << (32 - plen)
            first = ntop(socket.AF_INET, v.to_bytes(4, "big"))
        else:
            plen = rnd.randint(32, 64)
            v = (1 << 125 | rnd.getrandbits(125)) >> (128 - plen) << (128 - plen)
            first = ntop(socket.AF_INET6, v.to_bytes(16, "big"))
        if firsts is not None:
            firsts.append(first)
        out.append(f"{first}/{plen}")
    return out


# Both measured processes write their peak RSS (VmHWM: the exec'd process alone; wait4's
# ru_maxrss would include the fork of this 50 MiB process) to $BENCH_HWM at exit.
HWM_HOOK = textwrap.dedent("""\
    import atexit, os
    def _hwm():
        with open("/proc/self/status") as f:
            kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        with open(os.environ["BENCH_HWM"], "w") as f:
            f.write(kib)
    atexit.register(_hwm)
""")

# The comparison: read the file and parse each line's pattern with ipaddress.ip_network.
STDLIB_PARSE = HWM_HOOK + textwrap.dedent("""\
    import ipaddress, sys
    ip_network = ipaddress.ip_network
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if words:
                ip_network(words[0])
""")

CONFIG_CHECK = HWM_HOOK + "import sys\nfrom policyd.cli import main\nsys.exit(main(sys.argv[1:]))"


def timed_process(cmd: list[str], env: dict[str, str], cwd: Path, out: Path) -> dict[str, float]:
    """Run cmd (one with HWM_HOOK) pinned to the server CPU: wall seconds from spawn to exit
    and peak RSS. stdout and stderr go to `out`; a failure raises with its tail."""
    hwm = out.with_suffix(".hwm")
    env = {**env, "BENCH_HWM": str(hwm)}
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            pinned(SERVER_CPU, cmd), stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env, cwd=cwd
        )
        _, status, usage = os.wait4(p.pid, 0)  # CPU time of that process alone
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {p.returncode}: {out.read_text()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"s": wall, "cpu_s": cpu, "rss_mib": int(hwm.read_text()) / 1024}


def section_load(args: argparse.Namespace, work: Path) -> dict[str, object]:
    n = args.load_ranges
    d = work / "load"
    d.mkdir()
    firsts: list[str] = []
    t0 = time.monotonic()
    ranges_file = d / "ranges.txt"
    ranges_file.write_text("\n".join(load_range_lines(n, firsts=firsts)) + "\n")
    lookups_file = d / "lookups.txt"
    lookups_file.write_text("\n".join(lookup_addresses(firsts, 100_000)) + "\n")
    del firsts
    (d / "senders.txt").write_text("\n".join(Workload(logins=10).directory_lines()) + "\n")
    cfg = d / "policyd.toml"
    cfg.write_text(
        PROFILES_TOML.format(directory='backend = "file"\nfile = "senders.txt"', extra="")
    )
    if args.verbose:
        print(f"  (generated in {time.monotonic() - t0:.1f} s)", flush=True)
    kinds: list[tuple[str, list[str], Path]] = [
        ("stdlib", [PY, "-c", STDLIB_PARSE, str(ranges_file)], REPO),
        ("policyd", [PY, "-c", CONFIG_CHECK, "config-check", "--config", str(cfg)], REPO),
    ]
    if args.baseline_src:
        base = Path(args.baseline_src).resolve()
        kinds.append(
            ("before", [PY, "-c", CONFIG_CHECK, "config-check", "--config", str(cfg)], base)
        )
    if args.compiled:
        src = compiled_tree(args.compiled)
        if not build_of(src).startswith("compiled"):  # no silent fallback in the table
            raise SystemExit(f"--compiled: {src} runs {build_of(src)!r}")
        kinds.append(
            ("compiled", [PY, "-c", CONFIG_CHECK, "config-check", "--config", str(cfg)], src)
        )
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        row: dict[str, dict[str, float]] = {}
        for k in range(len(kinds)):  # the order rotates every round
            name, cmd, src = kinds[(r + k) % len(kinds)]
            row[name] = timed_process(cmd, server_env(False, src), src, d / f"{name}.out")
            if name != "stdlib" and f"{n} ranges" not in (d / f"{name}.out").read_text():
                raise RuntimeError(f"{name}: config-check did not load {n} ranges")
        rounds.append(row)
        if args.verbose:
            print(f"  round {r + 1}: {row}", flush=True)
    cmd = pinned(
        SERVER_CPU,
        [PY, str(Path(__file__).resolve()), "--_ranges-child", f"{ranges_file}:{lookups_file}"],
    )
    p = subprocess.run(cmd, capture_output=True, timeout=600, cwd=REPO, env=server_env(False))
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode(errors="replace")[-2000:])
    child = json.loads(p.stdout.decode().strip().splitlines()[-1])
    ratios = [row["policyd"]["s"] / row["stdlib"]["s"] for row in rounds]
    cpu_ratios = [row["policyd"]["cpu_s"] / row["stdlib"]["cpu_s"] for row in rounds]
    names = [name for name, _, _ in kinds]
    lines = [
        f"Load of {n:,} ranges (70% IPv4 /16-/32, 30% IPv6 /32-/64, random order; "
        f"{ranges_file.stat().st_size / 2**20:.1f} MiB): `policyd config-check` from process "
        f"start to exit against a process that only parses the same lines with "
        f"ipaddress.ip_network; pinned to CPU {SERVER_CPU}, {args.rounds} rounds, order rotating",
        "",
        "Wall seconds from spawn to exit, then CPU seconds of the process (user + system: "
        "steadier on a shared machine).",
        "",
        "| round | "
        + " | ".join(f"{k} s" for k in names)
        + " | **policyd / stdlib** | "
        + " | ".join(f"{k} CPU s" for k in names)
        + " | CPU ratio |",
        "|---:|" + "---:|" * (2 * len(names) + 2),
    ]
    for r, row in enumerate(rounds, 1):
        wall = " | ".join(f"{row[k]['s']:.2f}" for k in names)
        cpu = " | ".join(f"{row[k]['cpu_s']:.2f}" for k in names)
        lines.append(f"| {r} | {wall} | {ratios[r - 1]:.2f} | {cpu} | {cpu_ratios[r - 1]:.2f} |")
    wall = " | ".join(f"{statistics.median(row[k]['s'] for row in rounds):.2f}" for k in names)
    cpu = " | ".join(f"{statistics.median(row[k]['cpu_s'] for row in rounds):.2f}" for k in names)
    lines.append(
        f"| median | {wall} | **{statistics.median(ratios):.2f}** | {cpu} "
        f"| **{statistics.median(cpu_ratios):.2f}** |"
    )
    for other in ("compiled", "before"):
        if other in names:
            o_ratio = statistics.median(row[other]["s"] / row["stdlib"]["s"] for row in rounds)
            o_cpu = statistics.median(
                row[other]["cpu_s"] / row["stdlib"]["cpu_s"] for row in rounds
            )
            lines.append(
                f"{other} / stdlib (median of the rounds): wall {o_ratio:.2f}, CPU {o_cpu:.2f}"
            )
    rss = ", ".join(f"{k} {max(row[k]['rss_mib'] for row in rounds):.0f} MiB" for k in names)
    lines += [
        "",
        f"Peak RSS (VmHWM): {rss}.",
        f"Lookups on the same table (a fresh process, `Networks.load` {child['load_s']:.2f} s): "
        f"{child['lookup_us']:.2f} µs mixed ({child['hit_share']:.0%} hits), "
        f"{child['v6_miss_us']:.2f} µs IPv6 misses; RSS {child['rss_before_mib']:.0f} → "
        f"{child['rss_after_mib']:.0f} MiB.",
        "",
        "Targets: ratio ≤ 1.00; lookups ≤ 3 µs; RSS not above before.",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    return {
        "rounds": rounds,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "lookups": child,
        "text": text,
    }


# --------------------------------------------------------------------------------------------
# section: cold LDAP path and memory (need tests/servers/slapd.py and policyd/directory/ldap)


def ldap_available() -> str:
    """ "" when the LDAP pieces are there, else why not."""
    if not (REPO / "tests" / "servers" / "slapd.py").exists():
        return "tests/servers/slapd.py is missing"
    directory = REPO / "policyd" / "directory"
    if not ((directory / "ldap.py").exists() or (directory / "ldap" / "__init__.py").exists()):
        return "policyd/directory/ldap (LdapDirectory) is missing"
    try:
        from tests.servers.slapd import binary
    except Exception as e:  # noqa: BLE001
        return f"cannot import tests.servers.slapd: {e}"
    if not shutil.which(binary("slapd")):
        return "slapd is not installed"
    return ""


LDAP_BASE = "dc=example,dc=org"
LDAP_BIND_DN = "cn=policyd,ou=services,dc=example,dc=org"
LDAP_BIND_PASSWORD = "policyd-secret"  # tests/data/directory.ldif (a test-only account)
USER_FILTER = "(&(objectClass=inetOrgPerson)(uid={login}))"
GROUP_FILTER = "(&(objectClass=groupOfNames)(member={dn}))"
USER_ATTRS = ["mail", "mailLocalAddress"]
GROUP_ATTRS = ["mailLocalAddress"]


def start_slapd(work: Path, users: int) -> object:
    """A private slapd (tests/servers/slapd.py) with tests/data/directory.ldif plus `users`
    generated users (uid=user000000...), pinned to the load generator's CPU."""
    from tests.servers.slapd import DIRECTORY_LDIF, Slapd

    class BigSlapd(Slapd):
        def _slapd_conf(self) -> str:  # room for 100,000+ users (the class default: 64 MiB)
            return super()._slapd_conf().replace("maxsize 67108864", "maxsize 2147483648")

    ldif = work / "users.ldif"
    wl = Workload(logins=users)
    ldif.write_text(DIRECTORY_LDIF.read_text() + "\n" + wl.ldif(LDAP_BASE) + "\n")
    t0 = time.monotonic()
    slapd = BigSlapd(work / f"slapd-{users}", ldif=ldif)
    load_s = time.monotonic() - t0
    slapd.start()
    if shutil.which("taskset"):
        subprocess.run(
            ["taskset", "-a", "-p", "-c", CLIENT_CPU, str(slapd.pid)],
            capture_output=True,
            check=False,
        )
    slapd.load_s = load_s  # type: ignore[attr-defined]
    return slapd


def write_ldap_config(work: Path, url: str, max_entries: int, threads: int = 4) -> Path:
    (work / "ranges.txt").write_text("\n".join(Workload().range_lines()) + "\n")
    (work / "bindpw").write_text(LDAP_BIND_PASSWORD + "\n")
    directory = f'backend = "ldap"\nthreads = {threads}\nlookup_deadline = 10.0'
    extra = textwrap.dedent(f"""\
        [cache]
        enabled = true
        max_entries = {max_entries}

        [ldap]
        servers = ["{url}"]
        bind_dn = "{LDAP_BIND_DN}"
        bind_password_file = "bindpw"
        connect_timeout = 5
        receive_timeout = 5
        user_base = "{LDAP_BASE}"
        user_filter = "{USER_FILTER}"
        user_attributes = {json.dumps(USER_ATTRS)}
        group_filter = "{GROUP_FILTER}"
        group_attributes = {json.dumps(GROUP_ATTRS)}
    """)
    cfg = work / f"policyd-ldap-{max_entries}.toml"
    cfg.write_text(PROFILES_TOML.format(directory=directory, extra=extra))
    return cfg


def ldap_child(spec: dict[str, object]) -> None:
    """Fresh process, pinned to the server CPU: LdapDirectory.addresses_of against a bare ldap3
    loop doing the same searches, on disjoint sets of never-used logins, alternating rounds."""
    import ldap3
    from ldap3.utils.conv import escape_filter_chars
    from loadgen import login_name

    from policyd.config import load_config
    from policyd.directory.ldap import LdapDirectory

    cfg = load_config(str(spec["config"]))
    d = LdapDirectory(cfg.ldap, cfg.addresses.rules())
    url = str(spec["url"])
    per = int(spec["per_round"])  # type: ignore[call-overload]
    rounds = int(spec["rounds"])  # type: ignore[call-overload]
    offset = int(spec["offset"])  # type: ignore[call-overload]
    group_base = d.group_base

    conn = ldap3.Connection(
        ldap3.Server(url, get_info=ldap3.NONE),
        user=LDAP_BIND_DN,
        password=LDAP_BIND_PASSWORD,
        client_strategy=ldap3.SAFE_SYNC,
        auto_bind=True,
        read_only=True,
        check_names=False,
        raise_exceptions=False,
        auto_referrals=False,
        return_empty_attributes=False,
    )
    conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def bare(login: str, groups: bool) -> frozenset[str]:
        """addresses_of done by hand: the same two searches, no policyd code."""
        _, _, resp, _ = conn.search(
            LDAP_BASE,
            USER_FILTER.format(login=escape_filter_chars(login)),
            search_scope=ldap3.SUBTREE,
            attributes=USER_ATTRS,
            size_limit=2,
        )
        entries = [r for r in resp if r["type"] == "searchResEntry"]
        out: set[str] = set()
        if len(entries) != 1:
            return frozenset()
        for a in USER_ATTRS:
            out.update(v.lower() for v in entries[0]["attributes"].get(a, ()))
        if groups:
            _, _, resp, _ = conn.search(
                group_base,
                GROUP_FILTER.format(dn=escape_filter_chars(entries[0]["dn"])),
                search_scope=ldap3.SUBTREE,
                attributes=GROUP_ATTRS,
                size_limit=0,
            )
            for r in resp:
                if r["type"] == "searchResEntry":
                    for a in GROUP_ATTRS:
                        out.update(v.lower() for v in r["attributes"].get(a, ()))
        return frozenset(out)

    # check they agree (on logins not used below)
    for i in range(offset, offset + 20):
        assert d.addresses_of(login_name(i)) == bare(login_name(i), True), login_name(i)
    nxt = offset + 20
    res: dict[str, list[float]] = {"policyd": [], "bare": [], "bare_user_only": []}
    lat: dict[str, list[float]] = {k: [] for k in res}
    clock = time.perf_counter
    for r in range(rounds):
        order = ["policyd", "bare", "bare_user_only"]
        order = order[r % 3 :] + order[: r % 3]
        for kind in order:
            logins = [login_name(i) for i in range(nxt, nxt + per)]
            nxt += per
            times = lat[kind]
            t0 = clock()
            if kind == "policyd":
                for lg in logins:
                    t = clock()
                    d.addresses_of(lg)
                    times.append(clock() - t)
            else:
                groups = kind == "bare"
                for lg in logins:
                    t = clock()
                    bare(lg, groups)
                    times.append(clock() - t)
            res[kind].append(per / (clock() - t0))
    d.close()
    conn.unbind()
    pct = {k: [sorted(v)[int(len(v) * q)] * 1000 for q in (0.5, 0.99)] for k, v in lat.items() if v}
    print(json.dumps({"rates": res, "pct_ms": pct, "next_offset": nxt}))


def _pct(child: dict[str, object], kind: str) -> str:
    pct = child.get("pct_ms")
    p = pct.get(kind) if isinstance(pct, dict) else None
    return f"{p[0]:.2f} / {p[1]:.2f}" if p else "-"


def section_ldap(args: argparse.Namespace, work: Path) -> dict[str, object]:
    why = ldap_available()
    if why:
        text = f"Cold LDAP path: skipped ({why})"
        print(text, flush=True)
        return {"text": text, "skipped": why}
    slapd = start_slapd(work, args.ldap_users)
    try:
        url = slapd.url  # type: ignore[attr-defined]
        cfg = write_ldap_config(work, url, max_entries=100_000)
        spec = {
            "config": str(cfg),
            "url": url,
            "per_round": args.ldap_per_round,
            "rounds": args.ldap_rounds,
            "offset": 0,
        }
        cmd = pinned(
            SERVER_CPU, [PY, str(Path(__file__).resolve()), "--_ldap-child", json.dumps(spec)]
        )
        pr = subprocess.run(cmd, capture_output=True, timeout=900, cwd=REPO, env=server_env(False))
        if pr.returncode != 0:
            raise RuntimeError(pr.stderr.decode(errors="replace")[-3000:])
        child = json.loads(pr.stdout.decode().strip().splitlines()[-1])
        rates = child["rates"]
        nxt = int(child["next_offset"])
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratio_direct = statistics.median(
            a / b for a, b in zip(rates["policyd"], rates["bare"], strict=True)
        )
        # the whole server: unique logins (every request a cache miss), persistent connections
        server_rows = []
        log = Path(args.server_log) if args.server_log else None
        for conns in args.ldap_conns:
            count = args.ldap_server_requests
            pool = wl_pool_unique(work, nxt, count + conns + 10)
            nxt += count + conns + 10
            srv = start_policyd(cfg, free_port(), args.no_uvloop, log)
            try:
                r = measure(
                    srv,
                    [
                        "--pool-file",
                        str(pool),
                        "--conns",
                        str(conns),
                        "--count",
                        str(count),
                        "--duration",
                        "60",
                        "--warmup",
                        "0",
                    ],
                )
                r["rss_mib"] = rss_kib(srv.pid) / 1024
            finally:
                srv.stop()
            r["conns"] = conns
            server_rows.append(r)
            if args.verbose:
                print(f"  ldap server {conns} conns: {r}", flush=True)
    finally:
        slapd.stop()  # type: ignore[attr-defined]
    lines = [
        f"Cold LDAP path: slapd {args.ldap_users:,} generated users "
        "(+ tests/data/directory.ldif), "
        f"loaded in {slapd.load_s:.1f} s, "  # type: ignore[attr-defined]
        f"pinned to CPU {CLIENT_CPU}; policyd side on CPU "
        f"{SERVER_CPU}; every login used once (never cached); median of {args.ldap_rounds} "
        f"alternating rounds x {args.ldap_per_round:,} logins",
        "",
        "| lookup of one login (user search + group search) | logins/s | p50 / p99 ms "
        "| vs bare ldap3 |",
        "|---|---:|---:|---:|",
        f"| policyd LdapDirectory.addresses_of, direct calls, 1 thread | {med['policyd']:,.0f} "
        f"| {_pct(child, 'policyd')} | **{ratio_direct:.2f}** |",
        f"| bare ldap3 SAFE_SYNC loop, same two searches, 1 thread | {med['bare']:,.0f} "
        f"| {_pct(child, 'bare')} | 1.00 |",
        f"| (bare ldap3, user search only) | {med['bare_user_only']:,.0f} "
        f"| {_pct(child, 'bare_user_only')} | {med['bare_user_only'] / med['bare']:.2f} |",
    ]
    for r in server_rows:
        ratio = float(r["rps"]) / med["bare"]  # type: ignore[arg-type]
        lines.append(
            f"| policyd serve, {r['conns']} connections, unique logins (requests/s = lookups/s) "
            f"| {float(r['rps']):,.0f} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | **{ratio:.2f}** |"  # type: ignore[arg-type]
        )
    lines += ["", "Target: cold LDAP path >= 0.8 x the bare ldap3 loop."]
    if server_rows:
        lines.append(
            "policyd serve answers: "
            + "; ".join(
                f"{r['conns']} conns: {r['actions']}, {r['errors']} errors, "
                f"RSS {r['rss_mib']:.0f} MiB"
                for r in server_rows
            )
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return {"text": text, "direct": rates, "server": server_rows}


def wl_pool_unique(work: Path, offset: int, n: int) -> Path:
    """n authenticated requests (owned/foreign 9:1), each for a login not used before."""
    wl = Workload(logins=10**9, mix=parse_mix("owned=9,foreign=1"))
    return write_pool(
        work / f"pool-unique-{offset}.bin", wl.pool(n, unique_logins=True, offset=offset)
    )


def section_memory(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """RSS after N requests over L distinct logins with the LDAP backend and a bounded cache."""
    why = ldap_available()
    n, logins, max_entries = args.memory_requests, args.memory_logins, args.memory_cache
    repeat = max(1, n // logins)
    log = Path(args.server_log) if args.server_log else None
    samples: list[tuple[int, float]] = []
    slapd = None
    t_start = time.monotonic()
    try:
        if why:
            backend = f"file directory with {logins:,} logins (LDAP not available: {why})"
            wl = Workload(logins=logins)
            cfg = write_file_config(work, wl)
        else:
            slapd = start_slapd(work, logins)
            backend = (
                f"LDAP (slapd with {logins:,} users, loaded in {slapd.load_s:.0f} s), "  # type: ignore[attr-defined]
                f"cache.max_entries = {max_entries:,}"
            )
            cfg = write_ldap_config(work, slapd.url, max_entries=max_entries)  # type: ignore[attr-defined]
        srv = start_policyd(cfg, free_port(), args.no_uvloop, log)
        try:
            rss0 = rss_kib(srv.pid) / 1024
            cpu0 = cpu_seconds(srv.pid)
            # in slices, to sample RSS on the way; request k is for login k // repeat
            slices = 10
            per = n // slices
            done = 0
            for _ in range(slices):
                wl_args = [
                    "--sequence",
                    str(repeat),
                    "--sequence-start",
                    str(done),
                    "--logins",
                    str(logins),
                    "--conns",
                    "32",
                    "--count",
                    str(per),
                    "--duration",
                    str(args.memory_max_s),
                    "--warmup",
                    "0",
                ]
                r = loadgen(srv.port, wl_args, timeout=args.memory_max_s + 120)
                done += int(r["requests"])  # type: ignore[call-overload]
                samples.append((done, rss_kib(srv.pid) / 1024))
                if args.verbose:
                    print(
                        f"  memory: {done:,} requests, RSS {samples[-1][1]:.1f} MiB, "
                        f"{float(r['rps']):,.0f} req/s, actions {r['actions']}",
                        flush=True,
                    )
            cpu = cpu_seconds(srv.pid) - cpu0
        finally:
            srv.stop()
    finally:
        if slapd is not None:
            slapd.stop()  # type: ignore[attr-defined]
    elapsed = time.monotonic() - t_start
    lines = [
        f"Memory: policyd serve RSS over {n:,} requests on 32 connections, logins "
        f"{logins:,} distinct (request k is for login k // {repeat}: each login {repeat} times "
        f"in a row, the default mix); backend: {backend}",
        "",
        "| requests | RSS MiB |",
        "|---:|---:|",
        f"| 0 (started) | {rss0:.1f} |",
    ]
    lines += [f"| {k:,} | {v:.1f} |" for k, v in samples]
    lines += ["", f"({elapsed:.0f} s; server CPU {cpu:.0f} s)"]
    text = "\n".join(lines)
    print(text, flush=True)
    return {"text": text, "samples": samples, "rss0": rss0}


def section_profile(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """py-spy on policyd serve under the 32-connection load: where the time goes."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        text = "Profile: skipped (py-spy not installed)"
        print(text, flush=True)
        return {"text": text}
    wl = Workload(logins=args.logins, ranges=1000, seed=1, mix=parse_mix(args.mix))
    cfg = write_file_config(work, wl)
    pool = write_pool(work / "pool.bin", wl.pool(args.pool))
    srv = start_policyd(cfg, free_port(), args.no_uvloop, None)
    raw = work / "profile.txt"
    secs = args.profile_seconds
    try:
        lg = subprocess.Popen(
            pinned(
                CLIENT_CPU,
                [
                    PY,
                    str(BENCH / "loadgen.py"),
                    "--port",
                    str(srv.port),
                    "--pool-file",
                    str(pool),
                    "--conns",
                    "32",
                    "--warmup",
                    "1",
                    "--duration",
                    str(secs + 3),
                ],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        time.sleep(2)
        cmd = [
            pyspy,
            "record",
            "-f",
            "raw",
            "-o",
            str(raw),
            "-r",
            "250",
            "-d",
            str(secs),
            "--pid",
            str(srv.pid),
        ] + (["--native"] if args.profile_native else [])
        subprocess.run(cmd, capture_output=True, timeout=secs + 60, check=False)
        lg.communicate(timeout=secs + 60)
    finally:
        srv.stop()
    total = 0
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        k = int(n)
        total += k
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k
    top = args.profile_top
    lines = [
        f"Profile: py-spy record{' --native' if args.profile_native else ''}, {secs} s at "
        f"250 Hz on policyd serve under 32 persistent connections ({total} samples)",
        "",
        "| self | function |",
        "|---:|---|",
    ]
    lines += [
        f"| {v / total:.1%} | {k} |" for k, v in sorted(self_c.items(), key=lambda x: -x[1])[:top]
    ]
    lines += ["", "| inclusive | function |", "|---:|---|"]
    lines += [
        f"| {v / total:.1%} | {k} |"
        for k, v in sorted(incl.items(), key=lambda x: -x[1])
        if "policyd/" in k or "logging/" in k or "(libc" in k
    ][:top]
    text = "\n".join(lines)
    print(text, flush=True)
    return {"text": text}


# --------------------------------------------------------------------------------------------
# section: webload (issue 23: the web page's sessions in their own SQLite file)


def _reload_loop(url: str, login: str, stop: threading.Event, counter: list[int]) -> None:
    """A user reloading /addresses as fast as the page answers (the session is made by a
    trusted proxy's X-Remote-User, so every view is a session read and a last-use write)."""
    import http.client

    u = url.split("//", 1)[1]
    host, port = u.split(":")
    cookie = ""
    while not stop.is_set():
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            h = {"X-Remote-User": login}
            if cookie:
                h["Cookie"] = cookie
            conn.request("GET", "/addresses", headers=h)
            r = conn.getresponse()
            r.read()
            for raw in r.headers.get_all("Set-Cookie") or []:
                cookie = raw.split(";", 1)[0]
            counter[0] += 1
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()


def _verified_db(path: Path, logins: int) -> None:
    """A verification database with one verified foreign address for each of `logins`."""
    import sqlite3

    sys.path.insert(0, str(REPO))
    from policyd.verification.store import Store

    Store(path).close()  # creates the schema
    now = time.time()
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO requests (login, address, state, method, created, updated, verified_at) "
            "VALUES (?, ?, 'verified', 'admin', ?, ?, ?)",
            [(f"user{i}", f"user{i}@verified.test", now, now, now) for i in range(logins)],
        )


def section_webload(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """The policy service under load while a user reloads the web page in a loop: its p99 and
    how often it re-read the verified set, with the web sessions in the verification database
    (before: --baseline-src, an older checkout whose web.database defaulted to it) and in a
    file of their own (this checkout)."""
    wl = Workload(logins=args.logins, ranges=200, mix=parse_mix(args.mix))
    d = work / "webload"
    d.mkdir()
    (d / "ranges.txt").write_text("\n".join(wl.range_lines()) + "\n")
    (d / "senders.txt").write_text("\n".join(wl.directory_lines()) + "\n")
    runs: list[tuple[str, Path, str]] = []
    if args.baseline_src:
        runs.append(("before (sessions in the verification db)", Path(args.baseline_src), ""))
    runs.append(("after (sessions in web.sqlite)", REPO, "web.sqlite"))
    rows: dict[str, object] = {}
    print(f"{'':44} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'page views':>11} {'re-reads':>9}")
    for name, src, webdb in runs:
        run = d / f"run{len(rows)}"
        run.mkdir()
        vdb = run / "senders.sqlite"
        _verified_db(vdb, min(args.logins, 5000))
        extra = (
            f'[verification]\nenabled = true\ndatabase = "{vdb}"\n'
            'local_domains = ["example.org", "example.net"]\n'
            'link_base_url = "http://127.0.0.1/confirm"\n'
            '[verification.mail]\nfrom_address = "postmaster@example.org"\n'
            '[web]\nauth = "proxy"\ntrusted_proxies = ["127.0.0.1"]\ncookie_secure = false\n'
            + (f'database = "{run / webdb}"\n' if webdb else "")
        )
        cfg = run / "policyd.toml"
        cfg.write_text(
            PROFILES_TOML.format(
                directory=f'backend = "file"\nfile = "{d / "senders.txt"}"', extra=extra
            )
            .replace('level = "info"', 'level = "debug"')
            .replace('files = ["ranges.txt"]', f'files = ["{d / "ranges.txt"}"]')
        )
        port, web_port = free_port(), free_port()
        log = run / "serve.log"
        server = start_policyd(cfg, port, args.no_uvloop, log, src=REPO)
        web_log = open(run / "web.log", "ab")  # noqa: SIM115
        web_proc = subprocess.Popen(
            [PY, "-m", "policyd", "web", "--config", str(cfg), "--listen",
             f"127.0.0.1:{web_port}"],
            stdout=web_log, stderr=web_log, cwd=src, env=dict(os.environ, PYTHONPATH=str(src)),
        )  # fmt: skip
        stop = threading.Event()
        views = [0]
        try:
            wait_port(web_port, web_proc)
            before = _count_rereads(log)
            reloader = threading.Thread(
                target=_reload_loop, args=(f"http://127.0.0.1:{web_port}", "user1", stop, views)
            )
            reloader.start()
            r = measure(
                server,
                ["--conns", "8", "--duration", str(args.duration * 3), "--warmup",
                 str(args.warmup), "--logins", str(args.logins), "--ranges", "200",
                 "--mix", args.mix, "--pool", str(args.pool)],
            )  # fmt: skip
            stop.set()
            reloader.join(15)
            rereads = _count_rereads(log) - before
        finally:
            stop.set()
            web_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                web_proc.wait(10)
            if web_proc.poll() is None:
                web_proc.kill()
            web_log.close()
            server.stop()
        row = {
            "p50_ms": r.get("p50_ms"),
            "p99_ms": r.get("p99_ms"),
            "rps": r.get("rps"),
            "page_views": views[0],
            "rereads": rereads,
        }
        rows[name] = row
        print(
            f"{name:44} {float(row['p50_ms'] or 0):8.2f} {float(row['p99_ms'] or 0):8.2f} "
            f"{float(row['rps'] or 0):9.0f} {views[0]:11d} {rereads:9d}",
            flush=True,
        )
    return rows


def _count_rereads(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count("verified senders: re-read")
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# section: quotas

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


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        uv = f"uvloop {uvloop.__version__} installed"
    except ImportError:
        uv = "uvloop not installed"
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}); {uv}; "
        f"{platform.system()} {platform.release()}; load average at start {load[0]:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only",
        default="",
        help="comma list of sections: throughput,ranges,load,ldap,memory,profile,webload,quotas",
    )
    p.add_argument("--memory", action="store_true", help="also run the memory section (slow)")
    p.add_argument(
        "--no-uvloop",
        action="store_true",
        help="plain asyncio in policyd and the bare responder (POLICYD_NO_UVLOOP=1)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--max-requests", type=int, default=1_000_000, help="per cell")
    p.add_argument("--conns", default="1,8,32,128")
    p.add_argument("--cpr-workers", type=int, default=8)
    p.add_argument(
        "--paced-rate",
        type=float,
        default=1000,
        help="one more row: 32 connections sending this many requests/s in all (latency when "
        "the server is not saturated); 0 = no such row",
    )
    p.add_argument("--logins", type=int, default=20_000)
    p.add_argument("--pool", type=int, default=20_000, help="distinct requests in the pool")
    p.add_argument("--mix", default="allocated=30,owned=40,foreign=10,unauth=20")
    p.add_argument("--range-sizes", default="1000,100000,1000000")
    p.add_argument("--load-ranges", type=int, default=1_000_000, help="ranges in the load section")
    p.add_argument("--ldap-users", type=int, default=20_000)
    p.add_argument("--ldap-rounds", type=int, default=3)
    p.add_argument("--ldap-per-round", type=int, default=1_000, help="logins per round and kind")
    p.add_argument("--ldap-conns", default="32", help="policyd serve rows (connections)")
    p.add_argument("--ldap-server-requests", type=int, default=4_000)
    p.add_argument("--memory-requests", type=int, default=1_000_000)
    p.add_argument("--memory-logins", type=int, default=100_000)
    p.add_argument("--memory-cache", type=int, default=20_000, help="cache.max_entries")
    p.add_argument("--profile-seconds", type=int, default=8)
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames)")
    p.add_argument("--memory-max-s", type=float, default=600, help="time bound per slice")
    p.add_argument(
        "--baseline-src",
        default="",
        metavar="DIR",
        help="also measure policyd from this source tree (a checkout of an older "
        "commit): before/after table",
    )
    p.add_argument(
        "--compiled",
        nargs="?",
        const="build",
        default="",
        metavar="DIR",
        help="also measure the compiled build: the tree scripts/build-compiled makes of this "
        "checkout, or DIR (a tree with the extension modules next to the .py files)",
    )
    p.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="skip the parse-only responder (bare_responder.py --parse) in the throughput table",
    )
    p.add_argument("--server-log", default="", help="policyd/bare stderr (default /dev/null)")
    p.add_argument("--json", default="", help="also write all results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--_ranges-child", default="", help=argparse.SUPPRESS)
    p.add_argument("--_ldap-child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._ranges_child:
        ranges_child(*args._ranges_child.split(":", 1))
        return 0
    if args._ldap_child:
        ldap_child(json.loads(args._ldap_child))
        return 0
    args.conns = [int(c) for c in args.conns.split(",") if c]
    args.range_sizes = [int(c) for c in args.range_sizes.split(",") if c]
    args.ldap_conns = [int(c) for c in args.ldap_conns.split(",") if c]
    sections = [s for s in args.only.split(",") if s] or ["throughput", "ranges", "load", "ldap"]
    if args.memory and "memory" not in sections:
        sections.append("memory")

    cmd = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# policyd benchmark: {cmd}")
    print(f"machine: {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="policyd-bench-"))
    out: dict[str, object] = {"command": cmd, "machine": machine()}
    t0 = time.monotonic()
    try:
        for s in sections:
            print(f"\n## {s}", flush=True)
            ts = time.monotonic()
            if s == "throughput":
                out[s] = section_throughput(args, work)
            elif s == "ranges":
                out[s] = section_ranges(args, work)
            elif s == "load":
                out[s] = section_load(args, work)
            elif s == "ldap":
                out[s] = section_ldap(args, work)
            elif s == "memory":
                out[s] = section_memory(args, work)
            elif s == "profile":
                out[s] = section_profile(args, work)
            elif s == "webload":
                out[s] = section_webload(args, work)
            elif s == "quotas":
                out[s] = section_quotas(args, work)
            else:
                raise SystemExit(f"unknown section {s!r}")
            print(f"({s}: {time.monotonic() - ts:.0f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
