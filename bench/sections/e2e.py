"""Section e2e: messages through a real Postfix to discard, with and without policyd (issue 29).

Private Postfix instances (tests/servers/postfix.py, built from conf/postfix/), all
running at once, everything pinned to the server CPU, the clients to the other:

    alone     no policy service, no milter (policyd's restriction lists emptied)
    policy    `policyd serve` at RCPT (the documented main.cf), no milter: port 25 as
              `policyd postfix-lines` sets it up (no milter there unless protect_local_senders)
    policy unix   the same with the policy service on a unix socket
    +milter   the same, plus `policyd milter` at end-of-data (conf/postfix/milter.cf, unix socket)
    +milter before   with --e2e-baseline-src DIR: the same with the milter of DIR's policyd/

Workloads, one message per SMTP session (smtp-source's default), C sessions in parallel:

    (a) unauthenticated inbound on the port-25 service: smtp-source (msgs/s), and
        bench/smtpload.py (msgs/s and the latency from connect to the 250 after the data)
    (b) logged-in: bench/smtpload.py with XCLIENT LOGIN=alice on the port-25 service (the
        submission service requires STARTTLS, which neither tool speaks), From: her own address

The variants alternate within each round (the order rotates); each cell is the median over the
rounds. Not in the default run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sections.common import (
    CLIENT_CPU,
    CLK_TCK,
    PY,
    REPO,
    SERVER_CPU,
    cpu_seconds,
    free_port,
    pinned,
    server_env,
)

BENCH = Path(__file__).resolve().parents[1]

POLICYD_TOML = """\
[logging]
level = "info"
[directory]
backend = "file"
file = "{senders}"
[milter]
listen = "unix:{socket}"
profile = "submission"
[profiles.submission]
role = "submission"
[profiles.mx]
role = "mx"
"""

EXTERNAL = "friend@external.test"
RCPT = "bob@example.org"


@contextlib.contextmanager
def server_cpu() -> Iterator[None]:
    """Processes started inside (Postfix's master, and so its daemons) run on the server CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CPU)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start_milter(
    work: Path, config: Path, socket: Path, no_uvloop: bool, src: Path = REPO
) -> subprocess.Popen[bytes]:
    log_file = socket.with_suffix(".log")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            pinned(SERVER_CPU, [PY, "-m", "policyd", "milter", "--config", str(config)]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=src,
            env=server_env(no_uvloop, src),
            umask=0o000,  # Postfix's smtpd (user postfix) connects to the socket
        )
    deadline = time.monotonic() + 30
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"policyd milter did not start: {log_file.read_text()}")
        time.sleep(0.05)
    return proc


def tree_cpu_seconds(master: int) -> float:
    """CPU seconds of a Postfix instance: its master (its own time, and that of the daemons it
    has reaped: cutime/cstime) plus its live daemons (smtpd, cleanup, qmgr ...). A delta over a
    cell is the instance's CPU for that cell, whichever daemons exited in between."""
    with open(f"/proc/{master}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    total = sum(int(x) for x in fields[11:15]) / CLK_TCK
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == master:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
    return total


def smtp_source(port: int, messages: int, conns: int) -> dict[str, object]:
    cmd = ["smtp-source", "-s", str(conns), "-m", str(messages), "-l", "2000"]
    cmd += ["-f", EXTERNAL, "-t", RCPT, f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    r = subprocess.run(pinned(CLIENT_CPU, cmd), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {r.stdout}{r.stderr}")
    return {"msgs_per_s": messages / seconds, "seconds": seconds}


def smtpload(port: int, messages: int, conns: int, login: str) -> dict[str, object]:
    cmd = [PY, str(BENCH / "smtpload.py"), "--port", str(port), "--messages", str(messages)]
    cmd += ["--conns", str(conns), "--rcpt", RCPT]
    if login:
        cmd += ["--login", login, "--sender", "alice@example.org", "--from", "alice@example.org"]
    else:
        cmd += ["--sender", EXTERNAL, "--from", EXTERNAL]
    r = subprocess.run(pinned(CLIENT_CPU, cmd), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"smtpload failed: {r.stdout}{r.stderr}")
    out: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    if out["errors"]:
        raise RuntimeError(f"smtpload: {out['errors']} errors, first: {out['first_error']}")
    return out


def section_e2e(args: argparse.Namespace, work: Path) -> dict[str, object]:
    from tests.servers.postfix import PostfixServer

    if shutil.which("postfix") is None or shutil.which("smtp-source") is None:
        print("skipped: needs postfix (and its smtp-source) installed")
        return {"skipped": "no postfix"}
    # Outside /tmp/policyd-bench-*'s 0700: Postfix's unprivileged daemons read the queue and
    # smtpd connects to the milter's socket.
    top = Path(tempfile.mkdtemp(prefix="policyd-e2e-"))
    top.chmod(0o755)
    senders = top / "senders.txt"
    senders.write_text("alice: alice@example.org\nbob: bob@example.org\n", encoding="utf-8")
    config = top / "policyd.toml"
    config.write_text(POLICYD_TOML.format(senders=senders, socket=top / "milter.sock"))
    policy_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    servers: dict[str, PostfixServer] = {}
    no_policy = {
        "policyd_submission_relay_restrictions": "permit_sasl_authenticated, "
        "reject_unauth_destination",
        "policyd_mx_recipient_restrictions": "reject_unauth_destination",
    }
    milter = {
        "smtpd_milters": f"{{ unix:{top / 'milter.sock'}, default_action=tempfail }}",
        "milter_protocol": "6",
    }
    try:
        with open(top / "policyd.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    pinned(
                        SERVER_CPU,
                        [
                            PY,
                            "-m",
                            "policyd",
                            "serve",
                            "--config",
                            str(config),
                            "--listen",
                            f"127.0.0.1:{policy_port}",
                        ],
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=REPO,
                    env=server_env(args.no_uvloop),
                )
            )
        procs.append(start_milter(top, config, top / "milter.sock", args.no_uvloop))
        # the same policy service on a unix socket (no TCP/IP stack per request)
        policy_sock = top / "policy.sock"
        unix_config = top / "policyd-unix.toml"
        # smtpd runs as the postfix user
        unix_config.write_text(config.read_text() + '[server]\nunix_socket_mode = "0666"\n')
        with open(top / "policyd-unix.log", "ab") as log:
            serve = [PY, "-m", "policyd", "serve", "--config", str(unix_config)]
            procs.append(
                subprocess.Popen(
                    pinned(SERVER_CPU, [*serve, "--listen", f"unix:{policy_sock}"]),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=REPO,
                    env=server_env(args.no_uvloop),
                    umask=0o000,  # Postfix's smtpd (user postfix) connects to the socket
                )
            )
        deadline = time.monotonic() + 30
        while not policy_sock.exists():
            if procs[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("policyd serve on a unix socket did not start")
            time.sleep(0.05)
        policy_unix = {
            "policyd_mx_recipient_restrictions": "reject_unauth_destination, "
            f"check_policy_service {{ unix:{policy_sock}, policy_context=mx, "
            "{ default_action = 451 4.3.5 Sender policy service unavailable; try again later }"
            ", timeout=10s, max_idle=300s }",
        }
        variants = [
            ("alone", no_policy),
            ("policy", {}),
            ("policy unix", policy_unix),
            ("+milter", milter),
        ]
        if args.e2e_baseline_src:
            # the milter of an older tree (e.g. before issue 29) as a fourth column
            old_socket = top / "milter-before.sock"
            old_config = top / "policyd-before.toml"
            old_config.write_text(POLICYD_TOML.format(senders=senders, socket=old_socket))
            src = Path(args.e2e_baseline_src).resolve()
            procs.append(start_milter(top, old_config, old_socket, args.no_uvloop, src))
            before = {
                **milter,
                "smtpd_milters": f"{{ unix:{old_socket}, default_action=tempfail }}",
            }
            variants.append(("+milter before", before))
        with server_cpu():
            for name, extra in variants:
                d = top / name.strip("+").replace(" ", "-")
                d.mkdir()
                d.chmod(0o755)
                servers[name] = PostfixServer(d, policy_port, extra_main_cf=extra)
                servers[name].start()
        n, conns = args.e2e_messages, args.e2e_conns
        rows: dict[str, dict[str, list[dict[str, object]]]] = {
            k: {"a smtp-source": [], "a smtpload": [], "b smtpload": []} for k in servers
        }
        # warm-up: every path once (policyd's caches, Postfix's processes)
        for s in servers.values():
            smtpload(s.ports["mx"], 4 * conns, conns, "")
            smtpload(s.ports["mx"], 4 * conns, conns, "alice")
        names = list(servers)
        # CPU time per message of policyd's processes (from /proc: robust against the other
        # load on the machine, unlike msgs/s)
        used: dict[str, dict[str, subprocess.Popen[bytes]]] = {
            "alone": {},
            "policy": {"policyd": procs[0]},
            "+milter": {"policyd": procs[0], "milter": procs[1]},
        }
        used["policy unix"] = {"policyd": procs[2]}
        if len(procs) > 3:
            used["+milter before"] = {"policyd": procs[0], "milter": procs[3]}

        def cell(name: str, run: Callable[[], dict[str, object]]) -> dict[str, object]:
            before = {k: cpu_seconds(p.pid) for k, p in used[name].items()}
            master = servers[name].master_pid
            assert master is not None
            postfix_before = tree_cpu_seconds(master)
            res = run()
            res["postfix_cpu_ms"] = (tree_cpu_seconds(master) - postfix_before) / n * 1000
            for k, p in used[name].items():
                res[f"{k}_cpu_ms"] = (cpu_seconds(p.pid) - before[k]) / n * 1000
            return res

        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                port = servers[name].ports["mx"]
                rows[name]["a smtp-source"].append(
                    cell(name, functools.partial(smtp_source, port, n, conns))
                )
                rows[name]["a smtpload"].append(
                    cell(name, functools.partial(smtpload, port, n, conns, ""))
                )
                rows[name]["b smtpload"].append(
                    cell(name, functools.partial(smtpload, port, n, conns, "alice"))
                )
            print(f"  round {r + 1}/{args.rounds} done ({', '.join(order)})", flush=True)
        return report(rows, n, conns, args.rounds)
    finally:
        for s in servers.values():
            with contextlib.suppress(Exception):
                s.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
        else:
            print(f"kept {top}")


def report(
    rows: dict[str, dict[str, list[dict[str, object]]]], n: int, conns: int, rounds: int
) -> dict[str, object]:
    def med(cells: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(c[key]) for c in cells)  # type: ignore[arg-type]

    print(f"{n} messages per cell, {conns} sessions, one message per session, {rounds} rounds")
    print(
        "| workload | Postfix with | msgs/s | × alone | p50 ms | p99 ms | p99 − alone "
        "| Postfix CPU ms/msg | policyd CPU ms/msg | milter CPU ms/msg | CPU × alone |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out: dict[str, object] = {}
    for wl in ("a smtp-source", "a smtpload", "b smtpload"):
        base = rows["alone"][wl]
        base_rate = med(base, "msgs_per_s")
        base_cpu = med(base, "postfix_cpu_ms")
        for name, cells in ((k, v[wl]) for k, v in rows.items()):
            rate = med(cells, "msgs_per_s")
            lat = "p50_ms" in cells[0]
            p50 = f"{med(cells, 'p50_ms'):.2f}" if lat else "-"
            p99 = f"{med(cells, 'p99_ms'):.2f}" if lat else "-"
            dp99 = f"{med(cells, 'p99_ms') - med(base, 'p99_ms'):+.2f}" if lat else "-"
            keys = ("postfix_cpu_ms", "policyd_cpu_ms", "milter_cpu_ms")
            cpu = [f"{med(cells, k):.2f}" if k in cells[0] else "-" for k in keys]
            # the ratio one saturated CPU would give: Postfix alone's CPU per message over
            # this variant's (Postfix's own, policyd's, the milter's; the clients excluded)
            total = sum(med(cells, k) for k in keys if k in cells[0])
            print(
                f"| {wl} | {name} | {rate:,.0f} | {rate / base_rate:.2f} | {p50} | {p99} "
                f"| {dp99} | {cpu[0]} | {cpu[1]} | {cpu[2]} | {base_cpu / total:.2f} |"
            )
            out[f"{wl} / {name}"] = {
                "msgs_per_s": rate,
                "ratio": rate / base_rate,
                "cpu_ratio": base_cpu / total,
                "rounds": cells,
            }
    return out
