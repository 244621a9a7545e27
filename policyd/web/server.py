"""`policyd web`: load the config, build the page's state, listen, run until SIGTERM (WebApp)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from policyd.config import Config, ConfigError, load_config
from policyd.config.listen import parse_listen
from policyd.decision_log import setup_logging
from policyd.directory.base import Directory, DirectoryError
from policyd.systemd import (
    Notifier,
    ShutdownTrigger,
    StartupError,
    serve_daemon,
    until_signalled,
)
from policyd.web.app import build_app
from policyd.web.auth import LdapLogin
from policyd.web.backend import Blocking
from policyd.web.context import WebState
from policyd.web.sessions import SessionStore, StoreError

if TYPE_CHECKING:
    from policyd.verification.service import Verification

log = logging.getLogger(__name__)


class WebSetupError(Exception):
    """The page cannot start (a sentence naming the key or file)."""


def resolve_auth(config: Config) -> str:
    mode = config.web.auth
    if mode == "auto":
        return "ldap" if config.directory.backend == "ldap" else "none"
    return mode


def database_path(config: Config) -> Path:
    db = config.web.database
    if db.resolve() == config.verification.database.resolve():
        raise WebSetupError(
            f"{config.source}: web.database must not be verification.database ({db}): every "
            "page view writes to it, and each write makes the policy service and the milter "
            "re-read the verified addresses"
        )
    return db


def no_new_privileges() -> bool:
    """The kernel's no_new_privs flag (systemd's NoNewPrivileges=yes, which the shipped
    policyd-web.service sets): set-user/group-ID bits of programs we run are ignored."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            return any(line.split() == ["NoNewPrivs:", "1"] for line in f)
    except OSError:
        return False


def check_submission(config: Config) -> None:
    """submission = "sendmail" cannot work in the hardened unit: Postfix's sendmail hands the
    mail to postdrop, which is set-group-ID postdrop to write the maildrop queue, and
    NoNewPrivileges=yes (RestrictSUIDSGID=yes, ProtectSystem=strict) takes that away; every
    confirmation mail would fail. Refuse to start instead, naming the way that works."""
    vc = config.verification
    if not vc.enabled or vc.mail.submission != "sendmail":
        return
    if os.geteuid() != 0 and no_new_privileges():
        raise WebSetupError(
            f'{config.source}: verification.mail.submission = "sendmail" cannot work here: '
            "this process runs with no_new_privs (NoNewPrivileges=yes in "
            "policyd-web.service), so postdrop loses its set-group-ID and cannot queue the "
            'mail; use submission = "smtp" with conf/postfix/senders-confirm.cf'
        )


def make_verification(config: Config, directory: Directory) -> Verification | None:
    """The Verification service when [verification] is enabled, else None."""
    if not config.verification.enabled:
        return None
    from policyd.verification.build import build
    from policyd.verification.store import StoreUnavailable

    try:
        return build(config, directory)
    except StoreUnavailable as e:
        raise WebSetupError(f"verification.database: {e}") from None


def build_state(config: Config) -> WebState:
    from policyd.runtime import make_directory

    check_submission(config)
    rules = config.addresses.rules()
    auth = resolve_auth(config)
    if auth == "ldap" and config.directory.backend != "ldap":
        raise WebSetupError(f'{config.source}: web.auth = "ldap" needs directory.backend = "ldap"')
    wc = config.web
    if auth == "ldap" and not wc.trusted_proxies:
        log.warning(
            "web: web.trusted_proxies is empty: every client is counted under the address it "
            "connects from; behind a reverse proxy set web.trusted_proxies to the proxy's "
            "address (logins that a loopback peer forwards with X-Forwarded-For are refused "
            "until then)"
        )
    if auth == "ldap" and not wc.login_decoy_dn:
        log.info(
            "web: web.login_decoy_dn is not set: an unknown login's answer is held for as "
            "long as recent real binds took (the directory computes no hash for it)"
        )
    try:
        sessions = SessionStore(
            database_path(config),
            idle=wc.session_idle_timeout,
            absolute=wc.session_absolute_timeout,
            window=wc.login_window,
        )
    except StoreError as e:
        raise WebSetupError(f"web.database: {e}") from None
    try:
        directory = make_directory(config, rules)
        ldap_login = LdapLogin(config.ldap, rules, wc.login_decoy_dn) if auth == "ldap" else None
    except DirectoryError as e:
        raise WebSetupError(str(e)) from None
    return WebState(
        config=config,
        rules=rules,
        sessions=sessions,
        blocking=Blocking(wc.threads, wc.call_deadline),
        auth=auth,
        ldap_login=ldap_login,
        verification=make_verification(config, directory),
        directory_addresses=directory.addresses_of,
        directory_identity=directory.identity_of,
        directory_values=getattr(directory, "values_of", None),
    )


class WebApp:
    """One running `policyd web`, with the lifecycle of the policy server's App:
    load -> start -> ready -> wait -> stop."""

    def __init__(self, config_path: Path, listen: str | None = None) -> None:
        self.config_path = config_path
        #: --listen: instead of web.listen
        self.listen_override = listen
        #: sd_notify (does nothing outside systemd)
        self.notify = Notifier()
        self.stopping = asyncio.Event()
        self.state: WebState | None = None
        #: the listen spec, and the address it names (set by load)
        self.spec, self.host, self.port = "", "", 0
        self._runner: web.AppRunner | None = None

    async def serve(self, shutdown_trigger: ShutdownTrigger | None = None) -> None:
        """load -> start -> ready -> wait -> stop. Raises StartupError before anything
        listens."""
        await serve_daemon(self, shutdown_trigger)

    def load(self) -> None:
        """Config, listen address, logging, the page's state. Raises StartupError."""
        try:
            config = load_config(self.config_path)
            self.spec = self.listen_override or config.web.listen
            kind, host, port = parse_listen(self.spec)
            if kind != "tcp" or host is None or port is None:
                raise ConfigError(str(self.config_path), "web.listen", "must be HOST:PORT")
        except (ConfigError, ValueError) as e:
            raise StartupError(str(e)) from None
        self.host, self.port = host, port
        lc = config.logging
        setup_logging(lc.level, lc.target, lc.syslog_address, lc.syslog_facility)
        try:
            self.state = build_state(config)
        except WebSetupError as e:
            raise StartupError(str(e)) from None

    async def start(self) -> None:
        """Listen. Raises StartupError (the address in use, say)."""
        assert self.state is not None, "load() first"
        self._runner = web.AppRunner(build_app(self.state), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise StartupError(f"web.listen {self.spec}: {e.strerror or e}") from None
        log.info("web: listening on %s:%d (login: %s)", self.host, self.port, self.state.auth)

    def ready(self) -> None:
        self.notify("READY=1")

    async def until_signalled(self) -> None:
        """The default shutdown trigger: SIGTERM/SIGINT stop."""
        await until_signalled(self.stopping)

    async def stop(self) -> None:
        """Everything start() and load() made, in reverse. Safe after a failed start."""
        self.stopping.set()
        if self._runner is not None:
            self.notify("STOPPING=1")
            await self._runner.cleanup()
            self._runner = None
        st, self.state = self.state, None
        if st is not None:
            st.blocking.close()
            st.session_calls.close()
            st.sessions.close()


def run_web(config_path: Path, listen: str | None) -> int:
    """The `policyd web` command. Returns the exit status; a setup error raises StartupError
    (one line: the CLI prints it)."""
    asyncio.run(WebApp(config_path, listen).serve())
    return 0
