"""`policyd config-check --postfix`: each mistake in how the live Postfix uses policyd, one
line with its fix."""

from __future__ import annotations

import re

from policyd.config import Config
from policyd.postfix.conf import (
    POLICY_DEFAULT_ACTION,
    PolicyCall,
    Postfix,
    Service,
    is_ours,
    milter_block,
    milter_endpoint,
    milter_entries,
    policy_calls,
    policy_endpoint,
)

#: Restriction lists an smtpd evaluates, and the ones it evaluates before AUTH when
#: smtpd_delay_reject = no.
LISTS = (
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
)
BEFORE_AUTH = ("smtpd_client_restrictions", "smtpd_helo_restrictions")


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1")


def _where(s: Service, name: str) -> str:
    return f"{s.key} {name}" if name in s.overrides else f"main.cf {name} (used by {s.key})"


def _origin(s: Service, name: str) -> str:
    """Where a service's value comes from: its -o, or main.cf (shared)."""
    return s.key if name in s.overrides else "main.cf"


def _is_policyd(call: PolicyCall, endpoint: str) -> bool:
    """A call to our endpoint, or one naming a policy_context (only policyd reads it)."""
    return is_ours(call.endpoint, endpoint) or "policy_context" in call.attributes


def postfix_problems(config: Config, pf: Postfix) -> list[str]:
    """Each mistake in how this Postfix uses policyd, one line each, with the fix."""
    problems: list[str] = []
    policy = policy_endpoint(config, pf)
    milter = milter_endpoint(config, pf)
    profiles = config.profiles
    seen: set[object] = set()

    def report(line: str, key: object = None) -> None:
        """Once per line, or per key: a main.cf list shared by several services is one
        mistake, reported once (naming the first service that uses it)."""
        key = line if key is None else key
        if key not in seen:
            seen.add(key)
            problems.append(line)

    auth_services = [s for s in pf.smtpd_services() if _yes(pf.value(s, "smtpd_sasl_auth_enable"))]
    for s in pf.smtpd_services():
        delay_reject = _yes(pf.value(s, "smtpd_delay_reject") or "yes")
        auth = s in auth_services
        for name in LISTS:
            for call in policy_calls(pf.expanded(s, name)):
                ep = call.endpoint
                if not _is_policyd(call, policy):
                    continue
                where = _where(s, name)
                origin = (_origin(s, name), name, ep, tuple(call.attributes.items()))
                ctx = call.attributes.get("policy_context", "")
                if ctx and ctx not in profiles:
                    report(
                        f"{where}: policy_context={ctx} names no policyd profile (have: "
                        f"{', '.join(profiles)}); every request there gets 451 4.3.5. Fix: "
                        f"policy_context=mx (port 25) or submission, or add [profiles.{ctx}]",
                        (origin, "context"),
                    )
                if name in BEFORE_AUTH and not delay_reject:
                    report(
                        f"{where}: with smtpd_delay_reject = no this list runs before AUTH, so "
                        "policyd never sees the SASL login. Fix: smtpd_delay_reject = yes, or "
                        "move the check_policy_service to smtpd_recipient_restrictions",
                        (origin, "delay"),
                    )
                role = profiles[ctx].role if ctx in profiles else None
                if role == "submission" and not auth:
                    report(
                        f"{where}: policy_context={ctx} (a submission profile) on a service "
                        "without SMTP AUTH (smtpd_sasl_auth_enable = no): no client can log "
                        f"in, so every client outside the ranges is refused. Fix: -o "
                        f"smtpd_sasl_auth_enable=yes on {s.key}, or policy_context=mx",
                        (origin, "auth"),
                    )
                if ep.startswith("unix:/") and s.chrooted:
                    report(
                        f"{where}: {ep} is not reachable from {s.key}'s chroot (an absolute "
                        f"path is looked up inside {pf.queue_directory}). Fix: listen on "
                        "127.0.0.1 (inet:127.0.0.1:10040), or on a socket under "
                        f"{pf.queue_directory} named relative to it",
                        (origin, "chroot"),
                    )
                if call.default_action is None:
                    report(
                        f"{where}: {ep} has no {{ default_action = … }}: when policyd is down "
                        "Postfix uses smtpd_policy_service_default_action. Fix: "
                        f"{{ default_action = {POLICY_DEFAULT_ACTION} }}",
                        (origin, "default"),
                    )
                elif call.default_action.split()[0].upper() in ("DUNNO", "OK", "PERMIT"):
                    report(
                        f"{where}: {ep} default_action = {call.default_action} lets mail "
                        "through unchecked while policyd is down. Fix: "
                        f"default_action = {POLICY_DEFAULT_ACTION}",
                        (origin, "default"),
                    )
        milters = milter_entries(pf.expanded(s, "smtpd_milters"))
        found = [(a, st) for a, st in milters if is_ours(a, milter)]
        where = _where(s, "smtpd_milters")
        morigin = _origin(s, "smtpd_milters")
        for address, settings in found:
            action = settings.get("default_action")
            if action is None:
                global_action = pf.value(s, "milter_default_action") or "tempfail"
                bad = " (it lets mail through unchecked)" if global_action == "accept" else ""
                report(
                    f"{where}: policyd's milter {address} has no default_action of its own, "
                    f"so milter_default_action = {global_action} applies{bad}. Fix: "
                    f"{{ {address}, default_action=tempfail }}",
                    (morigin, "milter-default"),
                )
            elif action == "accept":
                report(
                    f"{where}: policyd's milter {address} has default_action=accept: a stopped "
                    "milter lets every forged From: through. Fix: default_action=tempfail",
                    (morigin, "milter-default"),
                )
            if address.startswith("unix:/") and s.chrooted:
                report(
                    f"{where}: {address} is not reachable from {s.key}'s chroot. Fix: "
                    f'[milter] listen = "unix:{pf.queue_directory}/policyd/milter.sock" '
                    "and smtpd_milters … unix:policyd/milter.sock (relative to the queue "
                    "directory)",
                    (morigin, "milter-chroot"),
                )
        if s in auth_services and not found:
            report(
                f"{s.key}: clients log in here (smtpd_sasl_auth_enable = yes) but policyd's "
                f"milter {milter} is not in its smtpd_milters, so header From: is not checked. "
                f"Fix: append {milter_block(milter)} to {where.split(' (')[0]}"
            )
    p25 = pf.port25()
    for s in [*([p25] if p25 else []), *pf.submission_services()]:
        calls = [c for name in LISTS for c in policy_calls(pf.expanded(s, name))]
        if not any(_is_policyd(c, policy) for c in calls):
            report(
                f"{s.key}: policyd is not asked here (no check_policy_service {policy} in its "
                "restriction lists). Fix: the commands of `policyd postfix-lines`"
            )
    for s in pf.submission_services():
        if s not in auth_services:
            report(
                f"{s.key}: port {s.port} without SMTP AUTH (smtpd_sasl_auth_enable = no): "
                f"your users cannot log in there. Fix: postconf -P "
                f"'{s.key}/smtpd_sasl_auth_enable=yes'"
            )
    problems.extend(_confirm_relay_problems(config, pf))
    return problems


def _confirm_relay_problems(config: Config, pf: Postfix) -> list[str]:
    v = config.verification
    if not v.enabled or v.mail.submission != "smtp":
        return []
    port = str(v.mail.smtp_port)
    services = [
        s for s in pf.smtpd_services() if s.type == "inet" and s.port in (port, _name_of(port))
    ]
    if not services:
        return [
            f"[verification.mail] smtp_port = {port}: no smtpd service of this Postfix listens "
            "there, so confirmation mails cannot be sent. Fix: the service of "
            "conf/postfix/senders-confirm.cf on a free loopback port, or submission = "
            '"sendmail"'
        ]
    out = []
    for s in services:
        host = s.name.rpartition(":")[0]
        nets = pf.value(s, "mynetworks")
        loopback_only = host in ("127.0.0.1", "[::1]", "localhost") and all(
            n.startswith(("127.", "[::1]")) for n in re.split(r"[\s,]+", nets.strip()) if n
        )
        if not loopback_only:
            out.append(
                f"{s.key}: the service policyd sends confirmation mails through (smtp_port = "
                f"{port}) is open to other senders (listens on {host or 'every address'}, "
                f"mynetworks = {nets or '(main.cf)'}). Fix: bind it to 127.0.0.1 with "
                "-o mynetworks=127.0.0.0/8 (conf/postfix/senders-confirm.cf)"
            )
        if pf.main.get("content_filter") and "content_filter" in s.overrides:
            out.append(
                f"{s.key}: smtp_port = {port} is your content filter's re-injection service "
                "(it sets content_filter=): policyd's mails would share it. Fix: a port of "
                'policyd\'s own (conf/postfix/senders-confirm.cf), or submission = "sendmail"'
            )
    return out


def _name_of(port: str) -> str:
    return {"25": "smtp", "587": "submission", "465": "submissions"}.get(port, port)
