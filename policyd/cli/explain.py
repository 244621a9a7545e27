"""`policyd check` and `policyd config-check`: one decision (policy service and/or milter)
explained with the facts it used, and the config summarised. Output for people."""

from __future__ import annotations

import argparse
import asyncio

from policyd.addresses import candidates, canonical_login, envelope_sender, normalize_address
from policyd.config import Config
from policyd.core.decision import Decision, to_action
from policyd.core.request import Request
from policyd.directory.base import DirectoryUnavailable
from policyd.milter.decide import decide_headers
from policyd.milter.headers import author_mailboxes
from policyd.policy.app import load
from policyd.policy.service import PolicyService
from policyd.runtime import Runtime


def check(args: argparse.Namespace) -> int:
    if args.sender is None and args.header_from is None:
        print("policyd check: give --sender (policy service) and/or --header-from (milter)")
        return 2
    config, runtime = load(args.config)
    try:
        return asyncio.run(_check(args, runtime))
    finally:
        runtime.close()


async def _check(args: argparse.Namespace, runtime: Runtime) -> int:
    if args.sender is not None:
        await _explain_policy(args, runtime)
    if args.header_from is not None:
        await _explain_header(args, runtime)
    if args.sasl_username:
        login = canonical_login(args.sasl_username, runtime.rules)
        try:
            owned = await runtime.lookups.addresses_of(login)
        except DirectoryUnavailable as e:
            print(f"login {login}: directory unavailable: {e}")
        else:
            listing = ", ".join(sorted(owned)) if owned else "(none: unknown login)"
            print(f"login {login}: owns {listing}")
            for line in getattr(runtime.lookups, "explain", lambda _: [])(login):
                print(f"login {login}: {line}")  # "owns x@...: verified <date> by code"
    return 0


async def _explain_policy(args: argparse.Namespace, runtime: Runtime) -> None:
    req = Request(
        request="smtpd_access_policy",
        protocol_state=args.protocol_state,
        client_address=args.client_address,
        sasl_username=args.sasl_username,
        sender=envelope_sender(args.sender),
        recipient=args.recipient,
        policy_context=args.policy_context,
        server_port=args.server_port,
    )
    profile, decision = await PolicyService(runtime).decide(req)
    _print_decision("", decision)
    print(f"profile={profile.name} (role {profile.role}, mode {profile.mode})")
    if req.sender != args.sender.strip() and f"<{req.sender}>" != args.sender.strip():
        print(f"sender {args.sender}: Postfix passes it as {req.sender}")
    keys = candidates(req.sender, runtime.rules)
    if req.sender and keys[0] != normalize_address(req.sender, runtime.rules):
        # a routing form: Postfix checks (and we own) the address it resolves to
        print(f"sender {req.sender}: Postfix resolves it to {keys[0]}; keys {', '.join(keys)}")
    rng = runtime.networks.lookup(args.client_address)
    if rng is None:
        print(f"client {args.client_address}: in no allocated range")
    else:
        doms = ", ".join(sorted(rng.domains)) if rng.domains is not None else "any"
        print(
            f"client {args.client_address}: in range {rng.label} ({rng.pattern}, "
            f"{rng.source}); sender domains: {doms}"
        )


async def _explain_header(args: argparse.Namespace, runtime: Runtime) -> None:
    """The milter's decision for these headers, as the milter makes it."""
    config = runtime.config
    profile = config.milter_profile()
    headers = [("From", args.header_from)]
    if args.header_sender is not None:
        headers.append(("Sender", args.header_sender))
    author = author_mailboxes(headers, runtime.rules)
    decision = await decide_headers(
        runtime,
        profile,
        args.sasl_username,
        author,
        client=args.client_address,
        sender=envelope_sender(args.sender or ""),
    )
    _print_decision("milter_", decision)
    print(f"milter_profile={profile.name} (role {profile.role}, mode {profile.mode})")
    if author.mailboxes is None:
        print(f"headers: invalid: {author.problem}")
    else:
        print(f"headers: mailboxes {', '.join(author.mailboxes)}")


def _print_decision(prefix: str, decision: Decision) -> None:
    action = to_action(decision)
    if prefix and action == "DUNNO":
        action = "DUNNO (no opinion)"
    print(f"{prefix}action={action}")
    print(f"{prefix}reason={decision.reason.value}")
    if decision.would_have:
        print(f"{prefix}would_have={decision.would_have}")


def config_check(args: argparse.Namespace) -> int:
    config, runtime = load(args.config)
    try:
        return _config_check(args, config, runtime)
    finally:
        runtime.close()


def _config_check(args: argparse.Namespace, config: Config, runtime: Runtime) -> int:
    print(f"config {args.config}: OK")
    print(f"ranges: {runtime.networks.summary()}")
    d = runtime.directory
    if config.directory.backend == "file":
        from policyd.directory.static import StaticDirectory

        assert isinstance(d, StaticDirectory)
        print(f"directory: file {d.source}: {d.logins} logins, {d.addresses} addresses")
    else:
        print(f"directory: ldap {', '.join(config.ldap.servers)} base {config.ldap.user_base}")
    for name, p in config.profiles.items():
        ports = ",".join(map(str, p.ports)) or "-"
        default = " (default)" if name == config.policy.default_profile else ""
        print(
            f"profile {name}{default}: role {p.role}, mode {p.mode}, state {p.check_state}, "
            f"ports {ports}, accept {p.accept_action}, null sender {p.null_sender}, "
            f"protect_local_senders {'on' if p.protect_local_senders else 'off'}"
        )
    print(f"listen: {', '.join(config.server.listen)}")
    m = config.milter
    mp = config.milter_profile()
    print(
        f"milter: listen {m.listen}, profile {mp.name} (mode {mp.mode}), "
        f"timeout {m.timeout:g}s (run with `policyd milter`)"
    )
    from policyd.verification.build import summary

    print(summary(config))
    if not args.connect:
        return 0
    if config.directory.backend != "ldap":
        print('--connect: nothing to connect to (directory.backend is "file")')
        return 0
    from policyd.directory.ldap import check_connection

    ok, lines = check_connection(config.ldap)
    for line in lines:
        print(line)
    return 0 if ok else 1
