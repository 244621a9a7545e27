"""The header From: milter: a logged-in user may only write From:/Sender: addresses they own.

The policy service sees only the envelope sender; this milter (pymilter / libmilter) sees the
headers. It shares the engine (`decide_header_from`), the address rules, the directory and its
cache with the policy service. The only module that imports pymilter: the policy service runs
without it, and `policyd milter` says what to install when it is missing.

Per message:

    envfrom  {auth_authen} (Postfix sends it at MAIL FROM), the envelope sender; without a
             login (and protect_local_senders off) ACCEPT here: the only callback that
             waits for an answer, Postfix skips the milter for the rest of the message
    header   From: and Sender: values are kept
    eoh      parse (policyd.milter.headers), look up, decide, log one line; reply

Threads: libmilter calls back from one OS thread per MTA connection, and `runmilter` blocks
the main thread inside C. The directory cache (CachedLookups) lives on an asyncio event loop in
a daemon thread; callbacks submit their lookups to it and wait at most lookup_deadline + 1 s.
The in-memory file directory is called directly. Whatever goes wrong ends in 451 4.3.0: a
lookup that fails or times out, and any exception in a callback (caught here, and pymilter's
exception policy is set to TEMPFAIL too). Nothing is ever accepted because of an error.

Signals belong to libmilter (SIGTERM, SIGINT and SIGHUP all stop it): there is no reload;
restart the milter to read a changed config.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import Milter  # ImportError without pymilter: cli.py turns it into an install hint
import milter as _milter_c

from policyd.config import Config, load_config
from policyd.core.decision import Decision, Verdict
from policyd.core.engine import decide_header_from
from policyd.decision_log import log_line, milter_line, setup_logging
from policyd.milter import listen_warning
from policyd.milter.headers import AUTHOR_HEADERS, AuthorCheck, author_check, unfold
from policyd.milter.service import MilterService

log = logging.getLogger("policyd.milter")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: pymilter has no type hints: its decorator, typed. The MTA does not wait for the callback's
#: reply (Postfix supports it; pymilter turns the CONTINUE into NOREPLY when negotiated).
_noreply: Callable[[F], F] = Milter.noreply

#: The name libmilter registers (Sendmail's X line; Postfix does not use it).
MILTER_NAME = "policyd"
#: Reply when a callback fails unexpectedly (the configured directory_unavailable is used when
#: the profile is known; this is the last resort).
TEMPFAIL_REPLY = "451 4.3.0 Temporary failure in the header From: check, please try again later"
#: From:/Sender: values kept per message; of more only the name is kept (the message is invalid
#: anyway: RFC 5322 allows one of each).
MAX_KEPT_HEADERS = 22  # From:, Sender:, and up to 10 of each Resent- header


def decision_line(
    *,
    queue_id: str,
    client: str,
    login: str,
    sender: str,
    author: AuthorCheck,
    profile: str,
    decision: Decision,
    elapsed: float,
) -> str:
    """The milter's decision line (decision_log.milter_line): from= is the checked mailboxes
    (comma-separated), or the raw From: value when it is invalid."""
    shown = ",".join(author.mailboxes) if author.mailboxes is not None else author.from_value
    return milter_line(
        queue_id, client, login, sender, shown, profile, decision, author.problem, elapsed
    )


def split_reply(reply: str) -> tuple[str, str, str]:
    """ "550 5.7.1 text" -> ("550", "5.7.1", "text") for libmilter's setreply: '%' doubled (or
    libmilter drops the reply), and ASCII only (an SMTP reply is ASCII; a non-ASCII local part
    of an internationalised address becomes '?')."""
    code, xcode, text = (reply.split(" ", 2) + ["", ""])[:3]
    text = text.encode("ascii", "replace").decode("ascii")
    return code, xcode, text.replace("%", "%%")


class HeaderFromMilter(Milter.Base):  # type: ignore[misc]
    """One instance per MTA connection (Milter.factory). Callbacks run on libmilter threads,
    one connection's callbacks one after another."""

    def __init__(self, service: MilterService) -> None:
        self.service = service
        self.client = ""
        self._reset()

    def _reset(self) -> None:
        self.login = ""
        self.sender = ""
        self.headers: list[tuple[str, str]] = []
        #: a callback before end-of-headers failed: the message gets the tempfail
        self.failed = False
        self.started = time.monotonic()

    # Callbacks. Each returns a Milter code; an exception anywhere becomes a tempfail.

    @_noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        # libmilter: (ip, port) or (ip, port, flow, scope); TestCtx: a bare string.
        try:
            addr = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
            self.client = str(addr or "")
        except Exception:  # noqa: BLE001 - the client address is only for the log
            self.client = ""
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def envfrom(self, mailfrom: Any, *params: Any) -> int:
        """The first callback that knows whether the session logged in. Without a login (and
        without protect_local_senders) there is nothing to check: ACCEPT here, so Postfix
        skips this milter for the rest of the message (issue 29). Not @noreply: the MTA
        waits for this answer, which is what lets the ACCEPT end the message's callbacks."""
        try:
            self._reset()
            self.sender = _text(mailfrom).strip().removeprefix("<").removesuffix(">")
            self.login = _text(self.getsymval("{auth_authen}") or "")
            if not self.login.strip() and not self.service.profile.protect_local_senders:
                return self._accept_unauthenticated()
        except Exception:  # noqa: BLE001 - decided (tempfail) at end of headers
            log.exception("envfrom failed")
            self.failed = True
        return Milter.CONTINUE  # type: ignore[no-any-return]

    @_noreply
    def header(self, name: Any, value: Any) -> int:
        try:
            key = _text(name).strip().lower()
            if key in AUTHOR_HEADERS:
                # Past the first few only the name is kept: the count makes the message invalid.
                kept = len(self.headers) < MAX_KEPT_HEADERS
                self.headers.append((key, _text(value) if kept else ""))
        except Exception:  # noqa: BLE001 - decided (tempfail) at end of headers
            log.exception("header failed")
            self.failed = True
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def eoh(self) -> int:
        try:
            return self._decide()
        except Exception:  # noqa: BLE001 - never accept because of an error
            log.exception("header From: check failed; tempfail")
            return self._tempfail()

    def abort(self) -> int:
        self._reset()
        return Milter.CONTINUE  # type: ignore[no-any-return]

    def _accept_unauthenticated(self) -> int:
        """No login, nothing to check: the message's one decision line (from= is empty: the
        headers are not seen; queue_id may be too, before Postfix has assigned one), ACCEPT."""
        svc = self.service
        author = AuthorCheck(None, "", "")
        # The engine alone: no lookup, so no hop to the lookup loop's thread.
        decision = decide_header_from(
            "", None, svc.profile, None, svc.runtime.rules, client=self.client, sender=self.sender
        )
        log_line(
            decision_line(
                queue_id=_text(self.getsymval("i") or ""),
                client=self.client,
                login="",
                sender=self.sender,
                author=author,
                profile=svc.profile.name,
                decision=decision,
                elapsed=time.monotonic() - self.started,
            ),
        )
        return self._reply(decision)

    def _decide(self) -> int:
        if self.failed:
            return self._tempfail()
        svc = self.service
        if self.login.strip() or svc.profile.protect_local_senders:
            author = author_check(self.headers, svc.runtime.rules)
        else:
            # Nothing to check for this session: skip the parsing, log the raw From:.
            raw = next((v for k, v in self.headers if k == "from"), "")
            author = AuthorCheck(None, "", unfold(raw))
        decision = svc.decide(self.login, author, self.client, self.sender)
        queue_id = _text(self.getsymval("i") or "")
        log_line(
            decision_line(
                queue_id=queue_id,
                client=self.client,
                login=self.login.strip(),
                sender=self.sender,
                author=author,
                profile=svc.profile.name,
                decision=decision,
                elapsed=time.monotonic() - self.started,
            ),
        )
        if decision.verdict is Verdict.REJECT or decision.verdict is Verdict.DEFER:
            svc.quota_rejected(self.login, queue_id)
        return self._reply(decision)

    def _reply(self, decision: Decision) -> int:
        if decision.verdict is Verdict.REJECT:
            self.setreply(*split_reply(decision.reply))
            return Milter.REJECT  # type: ignore[no-any-return]
        if decision.verdict is Verdict.DEFER:
            self.setreply(*split_reply(decision.reply))
            return Milter.TEMPFAIL  # type: ignore[no-any-return]
        # ACCEPT, or DUNNO (not our business, or warn mode): nothing more to check here.
        return Milter.ACCEPT  # type: ignore[no-any-return]

    def _tempfail(self) -> int:
        try:
            reply = self.service.profile.replies.directory_unavailable
            self.setreply(*split_reply(reply if reply.startswith("4") else TEMPFAIL_REPLY))
        except Exception:  # noqa: BLE001 - the TEMPFAIL below stands without a text too
            log.exception("setreply failed")
        return Milter.TEMPFAIL  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    """pymilter passes str (surrogateescape-decoded UTF-8), or bytes in corner cases."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def install(service: MilterService) -> None:
    """Make pymilter create a HeaderFromMilter bound to `service` for each connection."""
    Milter.factory = functools.partial(HeaderFromMilter, service)


class MilterApp:
    """One running `policyd milter`, with the lifecycle of the policy server's App:
    load -> start -> ready -> wait -> stop. libmilter owns the wait and the signals
    (SIGTERM/SIGINT/SIGHUP all stop it: there is no reload)."""

    def __init__(self, config_path: str | Path) -> None:
        self.config_path = config_path
        self.config: Config | None = None
        self.service: MilterService | None = None

    def serve(self) -> int:
        """load -> start -> ready -> wait -> stop. The exit status.

        A bad config, range file or directory raises (ConfigError, NetworksError,
        DirectoryError) before anything listens: the CLI prints it.
        """
        self.load()
        try:
            self.start()
            self.ready()
            return self.wait()
        finally:
            self.stop()

    def load(self) -> None:
        """Config, logging, the service (runtime and profile)."""
        config = self.config = load_config(self.config_path)
        setup_logging(
            config.logging.level,
            config.logging.target,
            config.logging.syslog_address,
            config.logging.syslog_facility,
        )
        self.service = MilterService.from_config(config)

    def start(self) -> None:
        """Bind pymilter to the service; start the lookup loop."""
        assert self.service is not None, "load() first"
        install(self.service)
        # An exception escaping a callback ends in 451 4.3.0 (pymilter's reply), never in accept.
        _milter_c.set_exception_policy(Milter.TEMPFAIL)
        self.service.start()

    def ready(self) -> None:
        assert self.config is not None and self.service is not None
        p = self.service.profile
        log.info(
            "policyd milter starting on %s; profile %s (mode %s, protect_local_senders %s); "
            "directory %s",
            self.config.milter.listen,
            p.name,
            p.mode,
            "on" if p.protect_local_senders else "off",
            self.config.directory.backend,
        )
        if (warning := listen_warning(self.config.milter.listen)) is not None:
            log.warning("%s", warning.removeprefix("WARNING: "))

    def wait(self) -> int:
        """libmilter runs until a signal stops it. The exit status: 1 when it failed (its
        socket, perhaps another milter's, is left alone)."""
        assert self.config is not None
        listen = self.config.milter.listen
        try:
            Milter.runmilter(MILTER_NAME, listen, timeout=self.config.milter.timeout)
        except _milter_c.error as e:
            log.error("milter on %s failed: %s", listen, e)
            return 1
        self._close_service()
        _remove_socket(listen)
        log.info("milter stopped")
        return 0

    def stop(self) -> None:
        """Everything start() and load() made. Safe to call twice, or after a failed start."""
        self._close_service()

    def _close_service(self) -> None:
        service, self.service = self.service, None
        if service is not None:
            service.close()


def run_milter(config_path: str | Path) -> int:
    """`policyd milter`: run until libmilter stops (SIGTERM/SIGINT/SIGHUP). Exit status."""
    return MilterApp(config_path).serve()


def _remove_socket(spec: str) -> None:
    """libmilter leaves its unix socket behind on exit (it only removes a stale one at start)."""
    for prefix in ("unix:", "local:"):
        if spec.startswith(prefix):
            with contextlib.suppress(OSError):
                Path(spec[len(prefix) :]).unlink()
