"""Section ranges: Networks.load and Networks.lookup at 1,000 / 100,000 / 1,000,000 ranges."""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import time
from pathlib import Path

from sections.common import PY, REPO, RUN, SERVER_CPU, pinned, rss_kib, server_env

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
            [PY, str(RUN), "--_ranges-child", f"{ranges_file}:{lookups_file}"],
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
