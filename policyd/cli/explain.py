"""`policyd check` and `policyd config-check`: one decision (policy service and/or milter)
explained with the facts it used, and the config summarised. Output for people."""

from __future__ import annotations

import argparse
import asyncio
import sys

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
    service = PolicyService(runtime)
    service.quotas.read_only = True  # (a check counts nothing, suspends nobody, mails nobody)
    try:
        profile, decision = await service.decide(req)
    finally:
        await service.quotas.close()
    _print_decision("", decision)
    if profile.name in runtime.config.profiles:
        print(f"profile={profile.name} (role {profile.role}, mode {profile.mode})")
    else:
        have = ", ".join(runtime.config.profiles)
        print(f"profile=- (policy_context={args.policy_context} names no profile; have: {have})")
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
    # without --connect, no password is needed (the bind password is read by --connect's own
    # check_connection): an admin can check a config whose credential only the unit can read
    config, runtime = load(args.config, read_secrets=False)
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
    from policyd.milter import listen_warning

    if (warning := listen_warning(m.listen)) is not None:
        print(warning)
    from policyd.verification.build import summary

    print(summary(config))
    rc = 0
    if getattr(args, "postfix", False):
        rc = _postfix_check(args, config)
    if not args.connect:
        if config.directory.backend == "ldap" and len(runtime.rules.realms) > 1:
            print("realms: checked against the directory by --connect (and at start)")
        return rc
    if config.directory.backend != "ldap":
        print('--connect: nothing to connect to (directory.backend is "file")')
        return 0
    from policyd.directory.ldap import check_connection

    ok, lines = check_connection(config.ldap)
    for line in lines:
        print(line)
    if ok and len(runtime.rules.realms) > 1:
        from policyd.directory.base import DirectoryError
        from policyd.directory.ldap import LdapDirectory
        from policyd.directory.ldap.realms import check_realms

        assert isinstance(d, LdapDirectory)
        try:
            check_realms(d)
        except DirectoryError as e:
            print(f"realms: FAILED: {e}")
            return 1
        print("realms: ok (no local part is held by different entries under two realms)")
    return rc if ok else 1


def _postfix_check(args: argparse.Namespace, config: Config) -> int:
    """config-check --postfix: each mistake one line with its fix; 1 if there is one."""
    from policyd.postfix.check import postfix_problems
    from policyd.postfix.conf import PostconfError, read_postfix

    try:
        pf = read_postfix(args.postfix_config)
    except PostconfError as e:
        print(f"postfix: cannot read the configuration: {e}")
        return 1
    problems = postfix_problems(config, pf)
    for line in problems:
        print(f"postfix: {line}")
    if not problems:
        print(
            f"postfix: OK ({len(pf.smtpd_services())} smtpd services; policy service and "
            "milter where they belong)"
        )
    return 1 if problems else 0


def postfix_lines(args: argparse.Namespace) -> int:
    """The postconf commands that add policyd to the live Postfix (printed, not run)."""
    from policyd.config import load_config
    from policyd.postfix.conf import PostconfError, read_postfix
    from policyd.postfix.lines import postfix_lines as lines_for

    config = load_config(args.config)
    try:
        pf = read_postfix(args.postfix_config)
    except PostconfError as e:
        print(f"policyd: cannot read the Postfix configuration: {e}", file=sys.stderr)
        return 1
    out = lines_for(config, pf, relay_on_25=args.relay_on_25)
    for line in out.problems:
        print(f"policyd: {line}", file=sys.stderr)
    if out.problems:
        return 1
    where = f" -c {args.postfix_config}" if args.postfix_config else ""
    print(f"# policyd: commands that add policyd to this Postfix{where}; review, then run them")
    for line in out.commands:
        print(f"postconf{where} {line[9:]}" if line.startswith("postconf ") else line)
    if not out.commands:
        print("# nothing to add: policyd is already in place")
    print("postfix reload" if not where else f"postfix -c {args.postfix_config} reload")
    return 0
