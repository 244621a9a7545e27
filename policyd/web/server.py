"""`policyd web`: load the config, build the page's state, listen, run until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from policyd.config import Config, ConfigError, load_config
from policyd.directory.base import Directory, DirectoryError
from policyd.listen import parse_listen
from policyd.web.app import WebState, build_app
from policyd.web.auth import LdapLogin
from policyd.web.backend import Blocking
from policyd.web.sessions import SessionStore, StoreError

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


def make_verification(config: Config, directory: Directory) -> Any:
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
        directory_identity=directory.identity_of,
    )


async def serve_web(st: WebState, host: str, port: int, ready: Any = None) -> None:
    app = build_app(st)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("web: listening on %s:%d (login: %s)", host, port, st.auth)
    if ready is not None:
        ready("READY=1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if ready is not None:
            ready("STOPPING=1")
        await runner.cleanup()
        st.blocking.close()
        st.session_calls.close()
        st.sessions.close()


def run_web(config_path: Path, listen: str | None) -> int:
    """The `policyd web` command. Returns the exit status; a setup error raises StartupError
    (one line: the CLI prints it)."""
    from policyd.app import StartupError
    from policyd.decision_log import setup_logging
    from policyd.systemd import Notifier

    try:
        config = load_config(config_path)
        spec = listen or config.web.listen
        kind, host, port = parse_listen(spec)
        if kind != "tcp" or host is None or port is None:
            raise ConfigError(str(config_path), "web.listen", "must be HOST:PORT")
    except (ConfigError, ValueError) as e:
        raise StartupError(str(e)) from None
    lc = config.logging
    setup_logging(lc.level, lc.target, lc.syslog_address, lc.syslog_facility)
    try:
        st = build_state(config)
    except WebSetupError as e:
        raise StartupError(str(e)) from None
    notify = Notifier()
    try:
        asyncio.run(serve_web(st, host, port, notify if notify.enabled else None))
    except OSError as e:
        raise StartupError(f"web.listen {spec}: {e.strerror or e}") from None
    return 0
