"""Section load: `policyd config-check` of 1,000,000 ranges against the stdlib parsing them."""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import textwrap
import time
from pathlib import Path

from sections.common import (
    PROFILES_TOML,
    PY,
    REPO,
    RUN,
    SERVER_CPU,
    Workload,
    build_of,
    compiled_tree,
    pinned,
    server_env,
)
from sections.ranges import lookup_addresses

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
        [PY, str(RUN), "--_ranges-child", f"{ranges_file}:{lookups_file}"],
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
