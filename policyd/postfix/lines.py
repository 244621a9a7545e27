"""`policyd postfix-lines`: the postconf commands that insert policyd into the lists the admin
has, never replacing one."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from policyd.config import Config
from policyd.postfix.conf import (
    UNAUTH_DESTINATION,
    Postfix,
    Service,
    elements,
    has_ours,
    is_ours,
    milter_block,
    milter_endpoint,
    milter_entries,
    policy_block,
    policy_endpoint,
    under_queue,
    unreachable_from_chroot,
)


def insert_after_unauth(value: str, block: str) -> str:
    """`block` after the list's first reject/defer_unauth_destination (Postfix's
    SMTPD_POLICY_README), before anything that could permit and skip it; without one, after
    the leading permit_mynetworks / permit_sasl_authenticated (the host's own clients and
    logins keep passing as before), else first."""
    els = elements(value)
    at = next((e.end for e in els if e.text in UNAUTH_DESTINATION), None)
    if at is None:
        at = 0
        for e in els:
            if e.text not in ("permit_mynetworks", "permit_sasl_authenticated"):
                break
            at = e.end
    if at == 0:
        return f"{block}, {value}" if value.strip() else block
    return f"{value[:at]}, {block}{value[at:]}"


def insert_before_unauth(value: str, block: str) -> str | None:
    """`block` right before the list's first reject/defer_unauth_destination (None: there is
    none): what the admin's list permitted before still passes first."""
    for e in elements(value):
        if e.text in UNAUTH_DESTINATION:
            return f"{value[: e.start]}{block}, {value[e.start :]}"
    return None


def ours_before_unauth(value: str, endpoint: str) -> bool | None:
    """Whether our policy call comes before the list's first reject/defer_unauth_destination
    (None: the list lacks one of the two)."""
    els = elements(value)
    unauth = next((i for i, e in enumerate(els) if e.text in UNAUTH_DESTINATION), None)
    ours = next(
        (
            i
            for i, e in enumerate(els[:-1])
            if e.text == "check_policy_service"
            and has_ours(f"{e.text} {els[i + 1].text}", endpoint)
        ),
        None,
    )
    if unauth is None or ours is None:
        return None
    return ours < unauth


def without_ours(value: str, endpoint: str) -> str:
    """The list without our check_policy_service (to put it elsewhere)."""
    els = elements(value)
    for i, e in enumerate(els[:-1]):
        if e.text == "check_policy_service" and has_ours(f"{e.text} {els[i + 1].text}", endpoint):
            end = els[i + 2].start if i + 2 < len(els) else len(value)
            start = e.start
            if i + 2 >= len(els):  # the last entry: drop the separator before it instead
                start = els[i - 1].end if i else 0
            return value[:start] + value[end:]
    return value


def _hidden_unauth(value: str, pf: Postfix) -> str:
    """The $parameter a list takes its reject/defer_unauth_destination from ("": it is in the
    list itself, or nowhere): policyd must go after it, inside that parameter."""
    if any(e.text in UNAUTH_DESTINATION for e in elements(value)):
        return ""
    for e in elements(value):
        if e.text.startswith("$") and any(
            x.text in UNAUTH_DESTINATION for x in elements(pf.expand(e.text))
        ):
            return e.text
    return ""


def _command(*args: str) -> str:
    return shlex.join(["postconf", *args])


@dataclass
class Lines:
    """What postfix-lines prints: commands, and comments saying what each does."""

    commands: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, comment: str, *commands: str) -> None:
        self.commands.append(f"# {comment}")
        self.commands.extend(commands)


def _service_setting(s: Service, param: str, value: str) -> list[str]:
    """postconf -P for one service's -o. postconf -P takes no whitespace in a value, so such a
    value goes into a main.cf parameter of ours that the -o names (as Debian's
    $mua_relay_restrictions)."""
    if not re.search(r"\s", value):
        return [_command("-P", f"{s.key}/{param}={value}")]
    own = "policyd_" + re.sub(r"[^a-z0-9]+", "_", f"{s.name}_{s.type}".lower()).strip("_")
    own += "_" + param.removeprefix("smtpd_")
    return [_command("-e", f"{own} = {value}"), _command("-P", f"{s.key}/{param}=${own}")]


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1")


def login_services(pf: Postfix, p25: Service | None, subs: list[Service]) -> list[Service]:
    """Where clients log in: the submission services (587/465), and the port-25 service when
    it takes SASL logins (smtpd_sasl_auth_enable = yes). Other smtpd services (a content
    filter's re-injection …) are not touched."""
    on_25 = p25 is not None and _yes(pf.expanded(p25, "smtpd_sasl_auth_enable"))
    return ([p25] if on_25 and p25 is not None and p25 not in subs else []) + subs


def _milter_lines(
    out: Lines,
    config: Config,
    pf: Postfix,
    milter: str,
    p25: Service | None,
    subs: list[Service],
) -> None:
    """The milter goes where it has work: on the services where logins happen (`-o
    smtpd_milters`), or, when it checks sessions without a login too (protect_local_senders
    of its profile) or port 25 takes logins, appended to main.cf's smtpd_milters. Without
    work on port 25 it stays out of that path entirely: a milter there costs every inbound
    SMTP session a connection, a libmilter thread and a callback (issue 29)."""
    global_milters = pf.main.get("smtpd_milters", "")
    entry = milter_block(milter)
    # already in main.cf's list: every service without its own -o has it
    in_main = any(is_ours(a, milter) for a, _ in milter_entries(pf.expand(global_milters)))
    logins = login_services(pf, p25, subs)
    protect = config.milter_profile().protect_local_senders
    everywhere = in_main or protect or (p25 is not None and p25 in logins)
    if everywhere and not in_main:
        new = f"{global_milters}, {entry}" if global_milters.strip() else entry
        why = (
            "its profile has protect_local_senders on: it checks mail without a login too"
            if protect
            else "clients log in on port 25 too"
        )
        out.add(
            f"the header From: milter, APPENDED to your smtpd_milters ({why}): your milters "
            "(DKIM signing …) keep their order and see the message as before; default_action="
            "tempfail for ours alone (milter_default_action stays as it is)",
            _command("-e", f"smtpd_milters = {new}"),
        )
    for s in logins:
        own = s.overrides.get("smtpd_milters")
        if own is None and everywhere:
            continue  # main.cf's list, which now has ours
        current = own if own is not None else global_milters
        if any(is_ours(a, milter) for a, _ in milter_entries(pf.expand(current))):
            continue
        new = f"{current}, {entry}" if current.strip() else entry
        if own is not None:
            comment = f"{s.key} sets its own smtpd_milters: ours is appended there"
        else:
            comment = (
                f"{s.key}: the header From: milter only where clients log in (not on port 25, "
                "where it would have nothing to check); your main.cf smtpd_milters (DKIM "
                "signing …) first, COPIED into the -o (a -o cannot name $smtpd_milters: if you "
                "change main.cf's list later, change this one too), ours APPENDED with "
                "default_action=tempfail for ours alone"
            )
        out.add(comment, *_service_setting(s, "smtpd_milters", new))


def postfix_lines(config: Config, pf: Postfix, *, relay_on_25: bool = False) -> Lines:
    out = Lines()
    policy = policy_endpoint(config, pf)
    milter = milter_endpoint(config, pf)
    for what, key, addr in (
        ("policy service", "[server] listen", policy),
        ("milter", "[milter] listen", milter),
    ):
        if unreachable_from_chroot(addr, pf):
            out.problems.append(
                f"the {what} socket {addr[5:]} is outside {pf.queue_directory}, where a "
                f"chrooted smtpd cannot reach it. Fix: in policyd.toml {key} = "
                f'"unix:{pf.queue_directory}/policyd/{"milter" if what == "milter" else "policy"}'
                '.sock" (or a TCP listener on 127.0.0.1)'
            )
    # -- port 25 -----------------------------------------------------------------------------
    p25 = pf.port25()
    if p25 is None:
        out.problems.append("no smtpd on port 25 (smtp inet, or postscreen's smtpd pass) found")
    else:
        block = policy_block(policy, "mx")
        relay = pf.value(p25, "smtpd_relay_restrictions")
        if relay_on_25:
            new = None if has_ours(pf.expand(relay), policy) else insert_before_unauth(relay, block)
            if new is not None:
                out.add(
                    f"port 25 ({p25.key}): clients in policyd's allocated ranges relay, "
                    "checked by the mx profile; inserted before your reject_unauth_destination "
                    "(everything your list permitted before still passes first)",
                    *_service_setting(p25, "smtpd_relay_restrictions", new),
                )
            rcpt = pf.value(p25, "smtpd_recipient_restrictions")
            if ours_before_unauth(pf.expand(rcpt), policy) is not True and any(
                e.text in UNAUTH_DESTINATION for e in elements(rcpt)
            ):
                moved = insert_before_unauth(without_ours(rcpt, policy), block)
                assert moved is not None
                comment = (
                    f"port 25 ({p25.key}): the same before your recipient list's "
                    "reject_unauth_destination, which would refuse that relayed mail (only "
                    "permit_mynetworks/permit_sasl_authenticated let mail past it)"
                )
                if "smtpd_recipient_restrictions" in p25.overrides:
                    out.add(comment, *_service_setting(p25, "smtpd_recipient_restrictions", moved))
                else:
                    out.add(comment, _command("-e", f"smtpd_recipient_restrictions = {moved}"))
            elif not has_ours(pf.expand(relay), policy):
                out.problems.append(
                    f"{p25.key}: smtpd_relay_restrictions has no reject_unauth_destination: "
                    "cannot place the relay for the allocated ranges"
                )
        else:
            rcpt = pf.value(p25, "smtpd_recipient_restrictions")
            hidden = _hidden_unauth(rcpt, pf)
            if hidden:
                out.problems.append(
                    f"{p25.key}: smtpd_recipient_restrictions takes reject_unauth_destination "
                    f"from {hidden}: insert {block} right after it there yourself"
                )
            elif not has_ours(pf.expand(rcpt), policy):
                new = insert_after_unauth(rcpt, block)
                comment = (
                    "port 25: inbound mail is asked with the mx profile, after "
                    "reject_unauth_destination (so policyd never opens a relay) and before "
                    "the rest of your list (nothing after it can skip it)"
                )
                if "smtpd_recipient_restrictions" in p25.overrides:
                    out.add(
                        comment,
                        *_service_setting(p25, "smtpd_recipient_restrictions", new),
                    )
                else:
                    out.add(comment, _command("-e", f"smtpd_recipient_restrictions = {new}"))
    # -- submission 587 / submissions 465 ------------------------------------------------------
    subs = pf.submission_services()
    if not subs:
        out.problems.append("no submission (587) or submissions (465) smtpd service found")
    for s in subs:
        relay = pf.value(s, "smtpd_relay_restrictions")
        if has_ours(pf.expand(relay), policy):
            continue
        block = policy_block(policy, "submission")
        new = f"{block}, {relay}" if relay.strip() else block
        note = (
            ""
            if "smtpd_relay_restrictions" in s.overrides
            else (" (this service used main.cf's list: its current value is kept after ours)")
        )
        out.add(
            f"{s.key}: policyd decides first who relays (a login only as an address it owns; "
            f"a client without AUTH is told to enable it); your list follows unchanged{note}",
            *_service_setting(s, "smtpd_relay_restrictions", new),
        )
    # -- the milter ----------------------------------------------------------------------------
    _milter_lines(out, config, pf, milter, p25, subs)
    rel = (
        under_queue(config.milter.listen[5:], pf)
        if config.milter.listen.startswith("unix:")
        else None
    )
    if rel is not None and not Path(config.milter.listen[5:]).parent.is_dir():
        d = str(PurePosixPath(config.milter.listen[5:]).parent)
        out.commands.append(
            "# the milter's socket directory, inside Postfix's queue directory (reachable "
            "from a chrooted smtpd; policyd-milter.service's ReadWritePaths= names it)"
        )
        out.commands.append(
            shlex.join(["install", "-d", "-o", "policyd", "-g", "postfix", "-m", "0750", d])
        )
    return out
