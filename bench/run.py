#!/usr/bin/env python3
"""policyd benchmark: one script, one run, everything measured on the same machine.

    .venv/bin/python bench/run.py                 # throughput + ranges + load + cold LDAP (~4 min)
    .venv/bin/python bench/run.py --no-uvloop     # the same with plain asyncio servers
    .venv/bin/python bench/run.py --memory        # + RSS after 1,000,000 requests (~10 min)
    .venv/bin/python bench/run.py --only throughput,ranges,load,ldap,memory,profile,quotas
    .venv/bin/python bench/run.py --baseline-src DIR   # + policyd from DIR/policyd: before/after
    .venv/bin/python bench/run.py --compiled      # + the compiled build (scripts/build-compiled)

Results and how to read them: bench/RESULTS.md.

Sections (each in bench/sections/, what they share in bench/sections/common.py):

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
webload
    The policy service's latency and verified-set re-reads while users reload the web page
    (its sessions in their own SQLite file, issue 23).
quotas
    The END-OF-MESSAGE request with [quotas] on (in-memory store, and a redis-server on
    loopback from tests/servers/redis.py) against the RCPT request of the same logins with
    quotas off, 32 connections: req/s ratio saturated, and the p99 added at 32 connections
    paced at --paced-rate; per store; the store's CPU by --quota-store-cpu; --baseline-src
    adds the stores with an older tree's policyd (issue 28). Not in the default run.
e2e
    Messages through three real Postfix instances to discard: alone, with the policy service
    at RCPT, with the policy service and the milter (unix socket); unauthenticated inbound on
    port 25 (smtp-source, and bench/smtpload.py for latency) and logged-in sessions (XCLIENT
    LOGIN=); msgs/s, × alone, p50/p99 (issue 29). Not in the default run.
workers
    ``server.workers`` 1 against 2 (issue 29), the throughput workload, the load generator on
    CPU 1: all pinned to CPU 0, and allowed on both CPUs (then sharing CPU 1 with the load
    generator); req/s, p99, server CPU per request and cores used (supervisor + workers).
    Not in the default run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sections.e2e import section_e2e
from sections.ldap import ldap_child, section_ldap
from sections.load import section_load
from sections.memory import section_memory
from sections.profile import section_profile
from sections.quotas import section_quotas
from sections.ranges import ranges_child, section_ranges
from sections.throughput import section_throughput
from sections.webload import section_webload
from sections.workers import section_workers

# --------------------------------------------------------------------------------------------


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
        help="comma list of sections: throughput,ranges,load,ldap,memory,profile,webload,quotas,"
        "e2e,workers",
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
    p.add_argument(
        "--quota-conns",
        default="32,128",
        help="quotas: the saturated rows' connection counts (comma list; 32 always reads "
        '"saturated")',
    )
    p.add_argument(
        "--quota-store-cpu",
        choices=("server", "client", "none"),
        default="server",
        help="quotas: the redis-server pinned to policyd's CPU, the load generator's, or not",
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
    p.add_argument("--e2e-messages", type=int, default=2000, help="e2e: messages per cell")
    p.add_argument(
        "--e2e-baseline-src",
        default="",
        metavar="DIR",
        help="e2e: a fourth Postfix with the milter of DIR's policyd/ (an older tree)",
    )
    p.add_argument("--e2e-conns", type=int, default=8, help="e2e: SMTP sessions in parallel")
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
            elif s == "e2e":
                out[s] = section_e2e(args, work)
            elif s == "workers":
                out[s] = section_workers(args, work)
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
