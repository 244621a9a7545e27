"""Section memory: RSS of `policyd serve` after 1,000,000 requests over 100,000 logins."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sections.common import (
    Workload,
    cpu_seconds,
    free_port,
    loadgen,
    rss_kib,
    start_policyd,
    write_file_config,
)
from sections.ldap import ldap_available, start_slapd, write_ldap_config


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
