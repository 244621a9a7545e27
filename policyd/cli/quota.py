"""`policyd quota show|reset|suspend|unsuspend LOGIN`: the admin's view of a login's quotas.

Works on the shared store ([quotas] store = "redis://..."): the in-memory store lives in the
daemon's process, out of this command's reach. Every change (reset, suspend, unsuspend) is
audited: one line on the `policyd.audit` logger (the configured log target) and an entry in the
store's capped list `policyd:audit:quota`, naming who (the Unix user, or $SUDO_USER), what,
and the login. Exit status 0 when done, 1 when it failed (the reason on stderr), 2 for bad
usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from typing import Any

from policyd.cli.admin import add_command, load

audit_log = logging.getLogger("policyd.audit")

#: Audit entries kept in the store (the oldest are dropped).
AUDIT_KEEP = 10_000


def add_parser(sub: Any) -> None:
    qs = add_command(
        sub,
        "quota",
        help="a login's sending quotas: show, reset, suspend, unsuspend (needs a shared store)",
        description="Per-login sending quotas (see README: Sending quotas and stolen logins).",
        dest="quota_command",
    )
    p = qs.add_parser("show", help="usage, limit and reset time of each limit; suspended?")
    p.add_argument("login")
    p = qs.add_parser("reset", help="forget the login's counters (audited)")
    p.add_argument("login")
    p = qs.add_parser("suspend", help="suspend the login on every instance (audited)")
    p.add_argument("login")
    p.add_argument("--reason", default="by an admin", help="kept with the suspension")
    p = qs.add_parser("unsuspend", help="let the login send again (audited)")
    p.add_argument("login")


def _who() -> str:
    user = os.environ.get("SUDO_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def main(args: argparse.Namespace) -> int:
    from policyd.addresses import canonical_login
    from policyd.decision_log import setup_logging

    config = load(args)
    if config is None:
        return 1
    qc = config.quotas
    if qc.store == "none":
        print(
            f"policyd quota: needs a shared store ({config.source}: [quotas] store = "
            '"redis://..."); the in-memory counters live in the daemon\'s process',
            file=sys.stderr,
        )
        return 1
    lc = config.logging
    try:
        setup_logging(lc.level, lc.target, lc.syslog_address, lc.syslog_facility)
    except OSError as e:
        print(f"policyd quota: cannot log the audit line: {e}", file=sys.stderr)
        return 1
    login = canonical_login(args.login, config.addresses.rules())
    return asyncio.run(_run(args, qc, login, config))


#: seconds `quota show` waits for the login's LDAP entry ([quotas] ldap_attribute)
DIRECTORY_DEADLINE = 10.0


async def _ldap_values(config: Any, login: str) -> frozenset[str] | None:
    """The login's [quotas] ldap_attribute values (None: no such attribute configured, or a
    directory without attributes). Raises DirectoryError / DirectoryUnavailable / TimeoutError."""
    attr = config.quotas.ldap_attribute
    if not attr or config.directory.backend != "ldap":
        return None
    from policyd.runtime import make_directory

    directory = make_directory(config, config.addresses.rules())
    values_of = getattr(directory, "values_of", None)
    try:
        if values_of is None:
            return None
        values: frozenset[str] = await asyncio.wait_for(
            asyncio.to_thread(values_of, attr, login), DIRECTORY_DEADLINE
        )
        return values
    finally:
        directory.close()


async def _run(args: argparse.Namespace, qc: Any, login: str, config: Any = None) -> int:
    from policyd.directory.base import DirectoryError, DirectoryUnavailable
    from policyd.quotas.ldap_limits import effective_limits
    from policyd.quotas.redis_store import RedisStore
    from policyd.quotas.service import charges_for, format_duration
    from policyd.quotas.store import QuotaStoreError

    cmd = args.quota_command
    values = None
    if cmd == "show" and config is not None:
        try:
            values = await _ldap_values(config, login)
        except (DirectoryError, DirectoryUnavailable, TimeoutError, OSError) as e:
            why = str(e) or type(e).__name__
            print(
                f"policyd quota: the limits of {login} in the directory "
                f"([quotas] ldap_attribute = {qc.ldap_attribute}) could not be read: {why}",
                file=sys.stderr,
            )
            return 1
    store = RedisStore(qc.store, max(qc.store_timeout, 2.0))
    try:
        if cmd == "show":
            limits = effective_limits(qc, login, values)
            charges = charges_for(limits, 0, 0)
            usage = await store.usage(login, charges)
            suspended = await store.suspension(login)
            data = {
                "login": login,
                "exempt": qc.is_exempt(login),
                "suspended": suspended,
                "recipients_per_message": limits.recipients_per_message,
                "ldap_values": sorted(values) if values else [],
                "limits": [
                    {
                        "limit": u.name,
                        "used": u.used,
                        "max": u.limit,
                        "remaining": max(0, u.limit - u.used),
                        "resets_in_seconds": round(u.resets_in, 1),
                    }
                    for u in usage
                ],
            }
            if args.json:
                print(json.dumps(data))
                return 0
            print(f"login {login}" + (" (exempt: never limited)" if data["exempt"] else ""))
            print(f"suspended: {suspended}" if suspended else "suspended: no")
            if values:
                print(f"limits from LDAP: {qc.ldap_attribute}: {'; '.join(sorted(values))}")
            for u in usage:
                when = format_duration(u.resets_in) if u.resets_in > 0 else "-"
                print(
                    f"{u.name}: {u.used} of {u.limit} used, {max(0, u.limit - u.used)} left, "
                    f"back to 0 in {when}"
                )
            if limits.recipients_per_message:
                print(f"recipients_per_message: at most {limits.recipients_per_message}")
            if not charges and not limits.recipients_per_message:
                print("no limit set for this login")
            return 0
        if cmd == "reset":
            await store.reset(login)
            detail = ""
        elif cmd == "suspend":
            reason = " ".join(args.reason.split())[:200] or "by an admin"
            await store.suspend(login, f"{reason} ({_who()})")
            detail = reason
        else:
            await store.unsuspend(login)
            detail = ""
        await _audit(store, cmd, login, detail)
        if args.json:
            print(json.dumps({"ok": True, "login": login, "done": cmd}))
        else:
            print(f"{cmd}: {login}: done")
        return 0
    except QuotaStoreError as e:
        print(f"policyd quota: {e}", file=sys.stderr)
        return 1
    finally:
        await store.close()


async def _audit(store: Any, action: str, login: str, detail: str) -> None:
    who = _who()
    entry = json.dumps(
        {"at": round(time.time(), 3), "by": who, "action": action, "login": login, "detail": detail}
    )
    await store._call(
        "audit",
        store.client.pipeline(transaction=True)
        .lpush("policyd:audit:quota", entry)
        .ltrim("policyd:audit:quota", 0, AUDIT_KEEP - 1)
        .execute(),
    )
    audit_log.warning(
        "quota %s login=%s by=%s%s",
        action,
        login,
        who,
        f" reason={json.dumps(detail)}" if detail else "",
    )
