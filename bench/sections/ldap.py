"""Section ldap: the cold LDAP path against a bare ldap3 loop (a private slapd)."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import textwrap
import time
from pathlib import Path

from sections.common import (
    CLIENT_CPU,
    PROFILES_TOML,
    PY,
    REPO,
    RUN,
    SERVER_CPU,
    Workload,
    free_port,
    measure,
    pinned,
    rss_kib,
    server_env,
    start_policyd,
    wl_pool_unique,
)

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
        cmd = pinned(SERVER_CPU, [PY, str(RUN), "--_ldap-child", json.dumps(spec)])
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
