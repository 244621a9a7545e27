"""Section profile: py-spy on `policyd serve` under 32 connections."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from pathlib import Path

from sections.common import (
    BENCH,
    CLIENT_CPU,
    PY,
    REPO,
    Workload,
    free_port,
    parse_mix,
    pinned,
    start_policyd,
    write_file_config,
    write_pool,
)


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
