"""The [web] section (`policyd web`, policyd/web/): its keys, with the defaults documented in
conf/policyd.toml, and its rules. Pure: imports no web framework."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from policyd.config.listen import parse_listen
from policyd.config.tables import ConfigError


@dataclass(frozen=True)
class WebConfig:
    """`policyd web`: the self-service page for extra sender addresses (policyd/web/)."""

    listen: str = "127.0.0.1:10045"
    #: The page's public URL as the browser sees it ("" = taken from each request's Host).
    base_url: str = ""
    #: "" = verification.site_name
    site_name: str = ""
    #: auto: ldap with the LDAP directory, none with the file directory.
    auth: Literal["auto", "ldap", "proxy", "none"] = "auto"
    trusted_proxies: tuple[str, ...] = ()
    proxy_header: str = "X-Remote-User"
    cookie_secure: bool = True
    session_idle_timeout: float = 1800.0
    session_absolute_timeout: float = 43200.0
    #: SQLite file for sessions and login throttling: never the verification database (each
    #: page view writes, which would make the policy service re-read the verified set).
    database: Path = Path("/var/lib/policyd/web.sqlite")
    login_window: float = 900.0
    login_max_failures_per_ip: int = 20
    login_max_failures_per_login: int = 5
    #: DN an unknown login's password is tried against (an entry with a password nobody knows,
    #: hashed like the users'): the directory computes a hash either way. "" = a DN that does
    #: not exist (the answer then comes sooner for unknown logins; a warning at start).
    login_decoy_dn: str = ""
    max_body: int = 8192
    max_field: int = 1024
    call_deadline: float = 15.0
    threads: int = 4


def check_web(w: WebConfig, s: str) -> None:
    try:
        kind, _, _ = parse_listen(w.listen)
    except ValueError as e:
        raise ConfigError(s, "web.listen", str(e)) from None
    if kind != "tcp":
        raise ConfigError(s, "web.listen", "must be HOST:PORT or [IPV6]:PORT")
    if w.base_url and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", w.base_url):
        raise ConfigError(s, "web.base_url", "must be an http:// or https:// URL (no query)")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,63}", w.proxy_header):
        raise ConfigError(s, "web.proxy_header", "must be an HTTP header name")
    if w.auth == "proxy" and not w.trusted_proxies:
        raise ConfigError(s, "web.trusted_proxies", 'is required when web.auth = "proxy"')
    for i, net in enumerate(w.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                s, f"web.trusted_proxies[{i}]", f"{net!r} is not an IP address or network"
            ) from None
    for key in (
        "session_idle_timeout",
        "session_absolute_timeout",
        "login_window",
        "login_max_failures_per_ip",
        "login_max_failures_per_login",
        "max_body",
        "max_field",
        "call_deadline",
        "threads",
    ):
        if getattr(w, key) <= 0:
            raise ConfigError(s, f"web.{key}", "must be greater than 0")
    if w.session_idle_timeout > w.session_absolute_timeout:
        raise ConfigError(
            s, "web.session_idle_timeout", "must not exceed web.session_absolute_timeout"
        )
