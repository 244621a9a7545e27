"""`policyd config-check --connect`: the LDAP setup diagnosed step by step, per server."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import ldap3

from policyd.config import LdapConfig
from policyd.directory.base import DirectoryError
from policyd.directory.ldap import connection
from policyd.directory.ldap.filters import default_group_base


def check_connection(cfg: LdapConfig) -> tuple[bool, list[str]]:
    """Diagnose the LDAP setup step by step, for every configured server.

    Returns (ok, lines): ok only when every server passed every step. The steps, each a line
    "URL: step: ok/FAILED: detail": password (read), url, dns, tcp, tls (ldaps:// or
    StartTLS), bind, search base (user_base, then group_base). A server's steps stop at its
    first failure. Never raises for a connection problem; never prints the password."""
    lines: list[str] = []
    ok = True

    def add(where: str, step: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok = ok and good
        lines.append(f"{where}: {step}: {'ok' if good else 'FAILED'}: {detail}")

    try:
        password = connection.read_bind_password(cfg)
        add(
            "ldap",
            "password",
            True,
            "none: anonymous bind" if password is None else "read (not shown)",
        )
    except DirectoryError as e:
        add("ldap", "password", False, str(e))
        return False, lines
    try:
        tls = connection.make_tls(cfg)
    except DirectoryError as e:
        add("ldap", "tls setup", False, str(e))
        return False, lines
    why = cfg.servers_problem()
    if why is not None:
        add("ldap", "servers", False, f"ldap.servers {why}")
    group_base = cfg.group_base or default_group_base(cfg.user_base)
    for url in cfg.servers:
        try:
            spec = connection.parse_server_url(url, cfg.start_tls)
        except DirectoryError as e:
            add(url, "url", False, str(e))
            continue
        _check_server(spec, cfg, tls, password, group_base, add)
    return ok, lines


def _check_server(
    spec: connection.ServerSpec,
    cfg: LdapConfig,
    tls: Any,
    password: str | None,
    group_base: str,
    add: Callable[[str, str, bool, str], None],
) -> bool:
    where = spec.url
    if spec.scheme == "ldapi":
        if not os.path.exists(spec.host):
            add(where, "socket", False, f"{spec.host} does not exist")
            return False
        add(where, "socket", True, spec.host)
    else:
        assert spec.port is not None
        try:
            infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            add(where, "dns", False, f"cannot resolve {spec.host!r}: {e.strerror or e}")
            return False
        addrs = list(dict.fromkeys(str(i[4][0]) for i in infos))
        add(where, "dns", True, f"{spec.host} -> {', '.join(addrs)}")
        t0 = time.monotonic()
        try:
            with socket.create_connection((spec.host, spec.port), timeout=cfg.connect_timeout):
                pass
        except OSError as e:
            why = (
                f"no answer within connect_timeout {cfg.connect_timeout} s"
                if connection.is_timeout(e)
                else (e.strerror or str(e)).lower()
            )
            add(where, "tcp", False, f"port {spec.port}: {why}")
            return False
        add(where, "tcp", True, f"port {spec.port} open ({(time.monotonic() - t0) * 1000:.1f} ms)")
        if not spec.tls:
            add(where, "tls", True, "none (plain ldap://; ldap.start_tls is false)")
    report: list[tuple[str, bool, str]] = []
    try:
        conn = connection.open_connection(spec, cfg, tls, password, report)
    except connection.StepFailed as e:
        for step, good, detail in report:
            add(where, step, good, detail)
        add(where, e.step, False, e.reason)
        return False
    for step, good, detail in report:
        add(where, step, good, detail)
    try:
        for what, base, scope in (
            ("user_base", cfg.user_base, cfg.user_scope),
            ("group_base", group_base, cfg.group_scope),
        ):
            try:
                _ok, result, _, _ = conn.search(
                    base,
                    "(objectClass=*)",
                    search_scope=ldap3.BASE,
                    attributes=["1.1"],
                    time_limit=int(cfg.receive_timeout),
                )
            except Exception as e:  # noqa: BLE001 - reported, not raised
                add(
                    where,
                    f"search base {what}",
                    False,
                    f"{base}: {connection.describe_error(e, cfg)}",
                )
                return False
            code = int(result.get("result", -1)) if result else -1
            if code != connection.SUCCESS:
                add(
                    where, f"search base {what}", False, f"{base}: {connection.result_text(result)}"
                )
                return False
            add(where, f"search base {what}", True, f"{base} exists (scope {scope})")
        return True
    finally:
        connection.close_quietly(conn)
