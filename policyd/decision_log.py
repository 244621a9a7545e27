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

import atexit
import logging
import logging.handlers
import sys

# Private, but what the fast path needs: the loop running in this thread or None, without
# the exception get_running_loop() raises off the loop (see formats_plainly).
from asyncio import _get_running_loop as _running_loop
from threading import get_ident as _get_ident
from typing import Final

from policyd.core.decision import Decision, Verdict, to_action
from policyd.core.request import Request

logger: Final = logging.getLogger("policyd.decision")

_INFO: Final = logging.INFO
#: "00" ... "99": the hundredths of the ms= field (see _ms)
_HUNDREDTHS: Final[tuple[str, ...]] = tuple(f"{i:02d}" for i in range(100))


def _bare(value: str, printable: bool = False) -> bool:
    """Whether `value` may stand unquoted: printable ASCII without space, '"', '\\' or '='.
    (String methods, not a regex: this runs over every decision line's values.) `printable`:
    the caller knows it holds no control character, so the slowest check is skipped."""
    return (
        value.isascii()
        and (printable or value.isprintable())
        and " " not in value
        and '"' not in value
        and "=" not in value
        and "\\" not in value
    )


def kv(value: str) -> str:
    """One logfmt value: bare when safe, else quoted; control characters escaped."""
    if value and _bare(value):
        return value
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    if not out.isprintable():  # (the per-character pass only when something needs escaping)
        out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in out)
    return f'"{out[:512]}"'


def _ms(elapsed: float) -> str:
    """Seconds as milliseconds with two decimals ("0.04"), without a float format spec."""
    hundredths = int(elapsed * 100_000 + 0.5)
    return f"{hundredths // 100}.{_HUNDREDTHS[hundredths % 100]}"


def decision_line(req: Request, profile: str, decision: Decision, elapsed: float) -> str:
    values = (
        req.queue_id,
        req.instance,
        req.client_address,
        req.sasl_username,
        req.sender,
        req.recipient,
    )
    # One check over the request's values ("!" is a safe separator): usually none needs
    # quoting, and then only the empty ones become "". (A request the parser found free of
    # control characters needs no isprintable pass: the slowest part of the check.)
    if _bare("!".join(values), req.printable):
        q, i, c, lo, s, r = [v or '""' for v in values]
    else:
        q, i, c, lo, s, r = map(kv, values)
    would = f" would={kv(decision.would_have)}" if decision.would_have else ""
    return (
        f"decision queue_id={q} instance={i} client={c} login={lo} sender={s} recipient={r} "
        f"profile={_kv_of_config(profile)} action={_logged_action(decision)} "
        f"reason={decision.reason._value_}{would} ms={_ms(elapsed)}"
    )


#: kv() of strings that come from the config (profile names, accept actions): a few.
_CONFIG_KV: Final[dict[str, str]] = {}


def _kv_of_config(value: str) -> str:
    out = _CONFIG_KV.get(value)
    if out is None:
        out = kv(value)
        if len(_CONFIG_KV) < 256:
            _CONFIG_KV[value] = out
    return out


def _logged_action(decision: Decision) -> str:
    """kv() of the decision's action: the accept words are the config's, a reject's text is
    the request's (not kept)."""
    action = to_action(decision)
    if decision.verdict is Verdict.ACCEPT or decision.verdict is Verdict.DUNNO:
        return _kv_of_config(action)
    return kv(action)


def milter_line(
    queue_id: str,
    client: str,
    login: str,
    sender: str,
    shown_from: str,
    profile: str,
    decision: Decision,
    problem: str,
    elapsed: float,
) -> str:
    """The milter's line, keys always in this order:

    milter queue_id=… client=… login=… sender=… from=… profile=… action=… reason=…
      [would=…] [problem=…] ms=…
    """
    would = f" would={kv(decision.would_have)}" if decision.would_have else ""
    prob = f" problem={kv(problem)}" if problem else ""
    return (
        f"milter queue_id={kv(queue_id)} client={kv(client)} login={kv(login)} "
        f"sender={kv(sender)} from={kv(shown_from)} profile={kv(profile)} "
        f"action={kv(to_action(decision))} reason={decision.reason.value}{would}{prob} "
        f"ms={_ms(elapsed)}"
    )


def log_decision(req: Request, profile: str, decision: Decision, elapsed: float) -> None:
    """The policy service's decision hook: one line per decision."""
    direct = _direct
    if direct is not None and direct.holding and direct.batch_thread == _get_ident():
        # A batch is open in this thread: the level and the fast path were checked when it
        # was opened, in this event-loop iteration.
        direct.take(decision_line(req, profile, decision, elapsed))
    elif logger.isEnabledFor(_INFO):
        log_line(decision_line(req, profile, decision, elapsed))


def log_line(line: str) -> None:
    """Log one decision line (policy service or milter) at INFO on `policyd.decision`."""
    direct = _direct
    if direct is None or not direct.take(line):
        logger.info("%s", line)


def hold_decision_lines() -> None:
    """Hold the decision lines of this thread until flush_decision_log(): the server calls
    the two around the requests of one event-loop iteration, so their lines are written
    together without a callback of their own (where the fast path applies; see
    _DirectStream)."""
    if _direct is not None:
        _direct.hold()


def flush_decision_log() -> None:
    """Write out decision lines still held for the current event-loop iteration."""
    if _direct is not None:
        _direct.flush()


class _DirectStream:
    """The decision log's fast path (one line per request, so its cost is per request).

    When the record would reach nothing but the stderr handler that setup_logging installed
    (no other handler or filter on the way, its formatter unchanged, the default LogRecord
    factory), the line is written to that handler's stream exactly as the handler would write
    it ("INFO policyd.decision: decision ...\\n", under the handler's lock), without building
    a LogRecord and formatting it: that takes most of the logging module's cost. In any other
    setup (syslog, an added handler or filter, pytest's caplog, stdio mode) the line goes
    through decision_log.info() as usual.

    On the event loop, lines are collected and written with one write and one flush at the
    end of the loop iteration that decided them (under load an iteration answers many
    connections, and a write per line was a tenth of the per-request cost). The batch is
    written before the loop handles any further I/O, so lines are never held for longer than
    one iteration; the check that the fast path still applies is made once per batch. Off the
    loop (threads, the CLI), each line is written and flushed at once.
    """

    __slots__ = ("handler", "formatter", "batch", "batch_thread", "holding")

    def __init__(self, handler: logging.StreamHandler, formatter: logging.Formatter) -> None:  # type: ignore[type-arg]
        self.handler = handler
        self.formatter = formatter
        # Lines of the current loop iteration, waiting for flush().
        self.batch: list[str] = []
        # A batch is open (in batch_thread): its lines are held until flush().
        self.holding = False
        self.batch_thread = 0

    def usable(self) -> bool:
        h = self.handler
        root = logging.root
        lg: logging.Logger = logger
        if lg.disabled or not lg.isEnabledFor(_INFO):  # (log_decision relies on it per batch)
            return False
        while lg is not root:
            if lg.handlers or lg.filters or not lg.propagate:
                return False
            lg = lg.parent  # type: ignore[assignment]
        handlers = root.handlers
        return (
            len(handlers) == 1
            and handlers[0] is h
            and not root.filters
            and not h.filters
            and h.level <= _INFO
            and h.formatter is self.formatter
            and formats_plainly(self.formatter)
            and logging.getLogRecordFactory() is logging.LogRecord
        )

    def take(self, line: str) -> bool:
        """Write (or batch) the line; False when the fast path does not apply now."""
        if "\n" in line:  # (decision_line escapes control characters: defensive only)
            line = line.replace("\n", " | ")
        batch = self.batch
        if self.holding and self.batch_thread == _get_ident():
            batch.append(line)
            return True
        if not self.usable():
            return False
        loop = _running_loop()  # (the loop running in this thread, if any)
        if loop is None or self.holding:  # (off the loop, or another thread holds a batch)
            self._emit([line])
            return True
        self.batch_thread = _get_ident()
        self.holding = True
        batch.append(line)
        loop.call_soon(self.flush)
        return True

    def hold(self) -> None:
        """Open a batch in this thread (see hold_decision_lines), if none is open and the
        fast path applies; flush() writes and closes it."""
        if not self.holding and self.usable():
            self.batch_thread = _get_ident()
            self.holding = True

    def flush(self) -> None:
        batch = self.batch
        self.holding = False
        if batch:
            self.batch = []
            self._emit(batch)

    def _emit(self, lines: list[str]) -> None:
        """Write the lines, each as "INFO policyd.decision: <line>\n" (the prefix is added
        here, once for the batch: not a new string per line)."""
        h = self.handler
        h.acquire()
        try:
            stream = h.stream
            stream.write(_PREFIX + _BETWEEN.join(lines) + "\n")
            if stream and hasattr(stream, "flush"):  # (StreamHandler.flush, lock already held)
                stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: the handler reports it
            h.handleError(
                logger.makeRecord(
                    logger.name,
                    _INFO,
                    __file__,
                    0,
                    "%s",
                    ("\n".join(lines),),
                    None,
                    "log_decision",
                )
            )
        finally:
            h.release()


def formats_plainly(formatter: logging.Formatter) -> bool:
    """Whether `formatter` still formats a record exactly as "%(levelname)s %(name)s:
    %(message)s", so the fast path may write that text itself.

    The one place that reads the stdlib's private attributes (Formatter._fmt, ._style._fmt,
    ._style._defaults); with asyncio._get_running_loop below, everything the fast path takes
    from private API. tests/unit/test_decision_log.py fails if a Python release changes them.
    """
    style = getattr(formatter, "_style", None)
    return (
        getattr(formatter, "_fmt", None) == _STDERR_FORMAT
        and getattr(style, "_fmt", None) == _STDERR_FORMAT
        and not getattr(style, "_defaults", None)
    )


_direct: _DirectStream | None = None
_STDERR_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"
_PREFIX: Final = f"{logging.getLevelName(_INFO)} {logger.name}: "
_BETWEEN: Final = "\n" + _PREFIX
atexit.register(flush_decision_log)


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
    global _direct
    if _direct is not None:
        _direct.flush()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler: logging.Handler
    if target == "syslog":
        facility = logging.handlers.SysLogHandler.facility_names.get(syslog_facility, 2 << 3)
        handler = logging.handlers.SysLogHandler(address=syslog_address, facility=facility)
        handler.setFormatter(
            _Formatter("policyd[%(process)d]: %(levelname)s %(name)s: %(message)s")
        )
    else:
        handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
        handler.setFormatter(_Formatter(_STDERR_FORMAT))
    _direct = None
    if isinstance(handler, logging.StreamHandler) and handler.formatter is not None:
        _direct = _DirectStream(handler, handler.formatter)
    root.addHandler(handler)
    root.setLevel(level.upper())
