"""`policyd senders ...`: the admin's command line for verified sender addresses.

Output for people by default, `--json` for scripts. Exit status 0 when done, 1 when refused
or failed (the reason on stderr, or as {"ok": false, ...} with --json), 2 for bad usage.
Never prints a token or code (the code goes only into the mail).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from policyd.cli.admin import add_command, load
from policyd.verification import states
from policyd.verification.views import Actor, Refused

if TYPE_CHECKING:
    from policyd.verification.service import Verification

ADMIN = Actor("cli")


def add_parser(sub: Any) -> None:
    """Register `senders` on the main parser's subparsers."""
    ss = add_command(
        sub,
        "senders",
        help="verified extra sender addresses: list, request, confirm, revoke, block, ...",
        description="Extra sender addresses a user proved are theirs (see README).",
        dest="senders_command",
    )
    p = ss.add_parser("list", help="requests and verified addresses")
    p.add_argument("--login")
    p.add_argument("--state", choices=states.STATES)
    for name, text in (
        ("request", "ask LOGIN's address to be verified: sends the confirmation mail"),
        ("resend", "a new code and link for a waiting request (the old ones stop working)"),
        ("cancel", "cancel a waiting request"),
        ("revoke", "the address stops being LOGIN's"),
    ):
        p = ss.add_parser(name, help=text)
        p.add_argument("login")
        p.add_argument("address")
    p = ss.add_parser("confirm", help="confirm with the code from the mail")
    p.add_argument("login")
    p.add_argument("address")
    p.add_argument("code")
    p = ss.add_parser("add", help="an admin override: verified without a mail (audited)")
    p.add_argument("login")
    p.add_argument("address")
    p.add_argument(
        "--no-verify", action="store_true", required=True, help="required: you vouch for it"
    )
    for name, text in (
        ("block", "put ADDRESS on the suppression list (cancels its waiting requests)"),
        ("unblock", "take ADDRESS off the suppression list"),
    ):
        p = ss.add_parser(name, help=text)
        p.add_argument("address")
    ss.add_parser("blocked", help="the suppression list")
    p = ss.add_parser("purge", help="delete expired, cancelled and refused requests")
    p.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    p = ss.add_parser("audit", help="the audit log")
    p.add_argument("--login")


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _out(args: argparse.Namespace, data: Any, text: str) -> int:
    if args.json:
        print(json.dumps({"ok": True, **data}, indent=2, sort_keys=True))
    elif text:
        print(text)
    return 0


def _refused(args: argparse.Namespace, e: Refused) -> int:
    if args.json:
        print(json.dumps({"ok": False, "code": e.code, "message": e.message, "detail": e.detail}))
    else:
        print(
            f"policyd senders: {e.message}" + (f" ({e.detail})" if e.detail else ""),
            file=sys.stderr,
        )
    return 1


def main(args: argparse.Namespace) -> int:
    from policyd.addresses import canonical_login
    from policyd.directory.base import DirectoryError
    from policyd.runtime import make_directory
    from policyd.verification.build import build
    from policyd.verification.store import StoreUnavailable

    config = load(args)
    if config is None:
        return 1
    if not config.verification.enabled:
        print(
            f"policyd senders: sender verification is off ({config.source}: "
            "[verification] enabled = false)",
            file=sys.stderr,
        )
        return 1
    rules = config.addresses.rules()
    try:
        directory = make_directory(config, rules)
        api = build(config, directory)
    except (DirectoryError, StoreUnavailable) as e:
        print(f"policyd senders: {e}", file=sys.stderr)
        return 1
    try:
        return _dispatch(args, api, lambda login: canonical_login(login, rules))
    except Refused as e:
        return _refused(args, e)
    finally:
        api.close()
        directory.close()


def _dispatch(args: argparse.Namespace, api: Verification, canon: Callable[[str], str]) -> int:
    cmd = args.senders_command
    if cmd == "list":
        rows = api.entries(canon(args.login) if args.login else None, args.state)
        lines = [
            f"{r.login:<20} {r.address:<36} {r.state:<9} "
            + (
                f"verified {_when(r.verified_at)} by {r.method}"
                if r.state == states.VERIFIED
                else f"verified {_when(r.verified_at)}, no longer counts: {r.why}"
                if r.why
                else f"link valid until {_when(r.link_expires)}"
                if r.state == states.PENDING
                else f"since {_when(r.updated)}"
            )
            + (f"  [last error: {r.last_error}]" if r.last_error else "")
            for r in rows
        ]
        return _out(
            args,
            {"entries": [dataclasses.asdict(r) for r in rows]},
            "\n".join(lines) if lines else "(none)",
        )
    if cmd in ("request", "resend"):
        fn = api.request if cmd == "request" else api.resend
        v = fn(canon(args.login), args.address, actor=ADMIN)
        return _out(
            args,
            {"request": dataclasses.asdict(v)},
            f"pending: {v.address} for {v.login}; a confirmation mail was sent from "
            f"{v.mail_from} (code valid until {_when(v.code_expires)}, link until "
            f"{_when(v.link_expires)})",
        )
    if cmd == "confirm":
        e = api.confirm_code(canon(args.login), args.address, args.code, actor=ADMIN)
        return _out(args, {"entry": dataclasses.asdict(e)}, f"verified: {e.address} for {e.login}")
    if cmd == "add":
        e = api.add_unverified(canon(args.login), args.address, actor=ADMIN)
        return _out(
            args,
            {"entry": dataclasses.asdict(e)},
            f"verified (no mail, by admin): {e.address} for {e.login}",
        )
    if cmd == "cancel":
        api.cancel(canon(args.login), args.address, actor=ADMIN)
        return _out(args, {}, f"cancelled: {args.address} for {canon(args.login)}")
    if cmd == "revoke":
        api.revoke(canon(args.login), args.address, actor=ADMIN)
        return _out(args, {}, f"revoked: {args.address} is no longer {canon(args.login)}'s")
    if cmd == "block":
        api.block(args.address, actor=ADMIN)
        return _out(args, {}, f"blocked: {args.address}")
    if cmd == "unblock":
        api.unblock(args.address, actor=ADMIN)
        return _out(args, {}, f"unblocked: {args.address}")
    if cmd == "blocked":
        blocked = api.blocked()
        return _out(
            args,
            {"blocked": [dict(address=a, since=t, by=w, reason=r) for a, t, w, r in blocked]},
            "\n".join(f"{a:<36} since {_when(t)} by {w}: {r}" for a, t, w, r in blocked)
            or "(none)",
        )
    if cmd == "purge":
        n = api.purge(args.older_than, actor=ADMIN)
        return _out(args, {"purged": n}, f"purged {n} request(s)")
    if cmd == "audit":
        trail = api.audit(canon(args.login) if args.login else None)
        lines = [
            f"{_when(a.at)}  {a.who}{'@' + a.ip if a.ip else ''}  {a.event:<14} "
            f"{a.login or '-'} {a.address or '-'}  {a.old_state or '-'} -> {a.new_state or '-'}"
            + (f"  ({a.detail})" if a.detail else "")
            for a in trail
        ]
        return _out(
            args, {"audit": [dataclasses.asdict(a) for a in trail]}, "\n".join(lines) or "(none)"
        )
    return 2  # pragma: no cover
