#!/usr/bin/env python3
"""How many cold-path lookups one slapd serves: CPU per lookup on the server side.

    .venv/bin/python bench/slapd_capacity.py                  # ~40 s
    .venv/bin/python bench/slapd_capacity.py --clients 3 --seconds 10 --no-tls

A private slapd (tests/servers/slapd.py) with --users generated users (bench/loadgen.py's
Workload: the same users as bench/run.py's cold LDAP section) and the test CA, pinned to one
CPU. --clients processes, each running policyd's own LdapDirectory (StartTLS by default, as
conf/ldap/policyd-ldap.toml ships) on logins never asked before — every call is the whole cold
path: the user search plus the group search — for --seconds, pinned to the other CPU.

Reported: lookups/s achieved, and slapd's CPU time per lookup from /proc (robust against the
clients and other load sharing the machine). On a 2-core machine the Python clients (ldap3,
~1 ms of CPU per search) saturate long before slapd does, so slapd's capacity is given as
lookups/s per slapd core = 1 / (slapd CPU seconds per lookup).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from loadgen import Workload, login_name  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def pin(cpu: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if shutil.which("taskset") and os.cpu_count() else cmd


def child(spec: dict[str, object]) -> None:
    """One client process: LdapDirectory.addresses_of on fresh logins until the deadline."""
    from policyd.addresses import AddressRules
    from policyd.config import LdapConfig
    from policyd.directory.ldap import LdapDirectory

    cfg = LdapConfig(
        servers=(str(spec["url"]),),
        start_tls=bool(spec["tls"]),
        ca_file=Path(str(spec["ca"])) if spec["tls"] else None,
        bind_dn="cn=policyd,ou=services,dc=example,dc=org",
        bind_password_file=Path(str(spec["pwfile"])),
        user_base="dc=example,dc=org",
        connect_timeout=5,
        receive_timeout=5,
    )
    d = LdapDirectory(cfg, AddressRules())
    i = int(spec["first"])  # type: ignore[call-overload]
    assert d.addresses_of(login_name(i)), "generated user not found"
    i += 1
    n = 0
    t_end = float(spec["t_end"])  # type: ignore[arg-type]
    t0 = time.monotonic()
    while time.monotonic() < t_end:
        d.addresses_of(login_name(i))
        i += 1
        n += 1
    wall = time.monotonic() - t0
    d.close()
    print(json.dumps({"lookups": n, "seconds": wall, "cpu": time.process_time()}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-tls", action="store_true")
    p.add_argument("--_child", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        child(json.loads(a._child))
        return 0

    from tests.servers.slapd import DIRECTORY_LDIF, Slapd, make_pki

    class BigSlapd(Slapd):
        def _slapd_conf(self) -> str:
            return super()._slapd_conf().replace("maxsize 67108864", "maxsize 2147483648")

    work = Path(tempfile.mkdtemp(prefix="slapd-capacity-"))
    try:
        ldif = work / "users.ldif"
        per_round = a.clients * 1500 * int(a.seconds)  # more fresh logins than can be used
        users = max(a.users, per_round * a.rounds + 10)
        ldif.write_text(DIRECTORY_LDIF.read_text() + "\n" + Workload(logins=users).ldif() + "\n")
        pki = make_pki(work / "pki")
        slapd = BigSlapd(work / "slapd", ldif=ldif, pki=pki)
        slapd.start()
        pwfile = work / "pw"
        pwfile.write_text("policyd-secret\n")
        pwfile.chmod(0o600)
        if shutil.which("taskset"):
            subprocess.run(["taskset", "-a", "-p", "-c", "0", str(slapd.pid)], capture_output=True)
        rows = []
        first = 0
        try:
            for r in range(a.rounds):
                t_end = time.monotonic() + 1.5 + a.seconds
                procs = []
                for _ in range(a.clients):
                    spec = {
                        "url": slapd.url,
                        "tls": not a.no_tls,
                        "ca": str(pki.ca_cert),
                        "pwfile": str(pwfile),
                        "first": first,
                        "t_end": t_end,
                    }
                    first += per_round // a.clients
                    cmd = pin("1", [sys.executable, __file__, "--_child", json.dumps(spec)])
                    procs.append(
                        subprocess.Popen(
                            cmd,
                            stdout=subprocess.PIPE,
                            cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                        )
                    )
                time.sleep(1.5)  # start-up, first bind
                cpu0, t0 = cpu_seconds(slapd.pid), time.monotonic()  # type: ignore[arg-type]
                outs = [json.loads(pr.communicate(timeout=a.seconds + 60)[0]) for pr in procs]
                cpu1, t1 = cpu_seconds(slapd.pid), time.monotonic()  # type: ignore[arg-type]
                n = sum(o["lookups"] for o in outs)
                wall = max(o["seconds"] for o in outs)
                rows.append(
                    {
                        "round": r,
                        "lookups": n,
                        "lookups_per_s": n / wall,
                        "slapd_cpu_ms_per_lookup": (cpu1 - cpu0) / n * 1000,
                        "slapd_cpu_share": (cpu1 - cpu0) / (t1 - t0),
                        "client_cpu_ms_per_lookup": sum(o["cpu"] for o in outs) / n * 1000,
                    }
                )
        finally:
            slapd.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.sort(key=lambda x: x["slapd_cpu_ms_per_lookup"])
    med = rows[len(rows) // 2]
    out = {
        "users": users,
        "clients": a.clients,
        "tls": not a.no_tls,
        "rounds": rows,
        "median": med,
        "slapd_lookups_per_core_s": 1000 / med["slapd_cpu_ms_per_lookup"],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=1))
    print(
        f"slapd cold path: {med['slapd_cpu_ms_per_lookup']:.3f} ms slapd CPU per lookup (user + "
        f"group search) -> {out['slapd_lookups_per_core_s']:,.0f} lookups/s per slapd core; "
        f"achieved here {med['lookups_per_s']:,.0f} lookups/s with {a.clients} policyd client "
        f"process(es), client CPU {med['client_cpu_ms_per_lookup']:.2f} ms per lookup",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
