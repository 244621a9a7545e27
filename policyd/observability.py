"""The decision log line (stable: admins grep it) and logging setup.

    decision queue_id=4BF1C20E93 instance=413f.6b0bdf9a.e01d7.0 client=192.0.2.7 login=alice
      sender=alice@example.org recipient=bob@example.net profile=submission action=OK
      reason=sender_owned ms=0.04

One line per decision at INFO on the `policyd.decision` logger, keys always in this order;
values with spaces or quotes are double-quoted with backslash escapes; an empty value is `""`.
In warn mode `would=` carries what would have been answered. Never a password: policyd never
sees one (SASL happens in Postfix), and the LDAP bind password is never formatted anywhere.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from collections.abc import Mapping

from policyd.decision import Decision
from policyd.engine import to_action

decision_log = logging.getLogger("policyd.decision")

_UNSAFE = re.compile(r'[\s"\\=]|[^\x21-\x7e]')


def kv(value: str) -> str:
    """One logfmt value: bare when safe, else quoted; control characters escaped."""
    if value and not _UNSAFE.search(value):
        return value
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in out)
    return f'"{out[:512]}"'


def decision_line(
    attrs: Mapping[str, str], profile: str, decision: Decision, elapsed: float
) -> str:
    g = attrs.get
    parts = [
        "decision",
        f"queue_id={kv(g('queue_id', ''))}",
        f"instance={kv(g('instance', ''))}",
        f"client={kv(g('client_address', ''))}",
        f"login={kv(g('sasl_username', ''))}",
        f"sender={kv(g('sender', ''))}",
        f"recipient={kv(g('recipient', ''))}",
        f"profile={kv(profile)}",
        f"action={kv(to_action(decision))}",
        f"reason={decision.reason.value}",
    ]
    if decision.would_have:
        parts.append(f"would={kv(decision.would_have)}")
    parts.append(f"ms={elapsed * 1000:.2f}")
    return " ".join(parts)


def log_decision(
    attrs: Mapping[str, str], profile: str, decision: Decision, elapsed: float
) -> None:
    if decision_log.isEnabledFor(logging.INFO):
        decision_log.info("%s", decision_line(attrs, profile, decision, elapsed))


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg.replace("\n", " | ")  # one record, one line


def setup_logging(
    level: str = "info",
    target: str = "stderr",
    syslog_address: str = "/dev/log",
    syslog_facility: str = "mail",
    stream: object | None = None,
) -> None:
    """Configure the root logger. stderr (journald adds time and unit) or syslog."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler: logging.Handler
    if target == "syslog":
        facility = logging.handlers.SysLogHandler.facility_names.get(syslog_facility, 2 << 3)
        handler = logging.handlers.SysLogHandler(address=syslog_address, facility=facility)
        handler.setFormatter(_Formatter("policyd[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
        handler.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
