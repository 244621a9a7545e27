"""Section webload: the policy service's latency while users reload the web page (issue 23)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from sections.common import (
    PROFILES_TOML,
    PY,
    REPO,
    Workload,
    free_port,
    measure,
    parse_mix,
    start_policyd,
    wait_port,
)


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
