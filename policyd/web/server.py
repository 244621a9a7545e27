"""`policyd web`: load the config, build the page's state, listen, run until SIGTERM (WebApp)."""

from __future__ import annotations

import asyncio
import logging
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
    if config.web.database is not None:
        return config.web.database
    return config.verification.database


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

    rules = config.addresses.rules()
    auth = resolve_auth(config)
    if auth == "ldap" and config.directory.backend != "ldap":
        raise WebSetupError(f'{config.source}: web.auth = "ldap" needs directory.backend = "ldap"')
    wc = config.web
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
        ldap_login = LdapLogin(config.ldap, rules) if auth == "ldap" else None
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
