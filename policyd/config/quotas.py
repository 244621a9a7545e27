"""The [quotas] section: per-login sending quotas and compromised-login detection (issue 28).

Registered in policyd.config (Config.quotas); documented key by key, with its default, in
conf/policyd.toml. `read_quotas` builds it from the TOML table (the per-domain and per-login
override tables are read here: TableReader has no mapping type) and validates it, raising
ConfigError naming file and key.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from policyd.config.replies import check_template
from policyd.config.store_url import parse_store_url
from policyd.config.tables import ConfigError, TableReader

#: The limits, in the order they are checked (and reported when several hit at once).
#: name -> (period in seconds, what one message costs: "messages", "recipients" or "bytes")
LIMITS: Mapping[str, tuple[float, str]] = types.MappingProxyType(
    {
        "messages_per_hour": (3600.0, "messages"),
        "messages_per_day": (86400.0, "messages"),
        "recipients_per_day": (86400.0, "recipients"),
        "bytes_per_day": (86400.0, "bytes"),
    }
)


@dataclass(frozen=True)
class QuotaLimits:
    """One set of limits; 0 = no limit. An override table sets only the keys it names."""

    messages_per_hour: int = 0
    messages_per_day: int = 0
    recipients_per_day: int = 0
    #: a hard cap per message, refused at RCPT (452 4.5.3) and checked again at END-OF-MESSAGE
    recipients_per_message: int = 0
    bytes_per_day: int = 0


@dataclass(frozen=True)
class CompromiseConfig:
    """Signals that a login is used by someone else; a score over `threshold` suspends it."""

    enabled: bool = False
    #: the sliding window the signals are counted over (seconds)
    window: float = 300.0
    #: points per distinct client network (/24 for IPv4, /64 for IPv6) beyond the first
    network_points: float = 1.0
    #: points per message beyond `burst_messages` within the window
    burst_messages: int = 60
    burst_points: float = 0.1
    #: points per policyd refusal of a sender the login does not own (sender_not_owned)
    not_owned_points: float = 2.0
    #: points per authenticated message with the null sender
    null_sender_points: float = 1.0
    #: a MaxMind-format database (GeoLite2-Country, GeoIP2-City, ...; python3-maxminddb):
    #: then points per distinct country of the client addresses beyond the first
    geoip_database: Path | None = None
    country_points: float = 3.0
    threshold: float = 10.0


@dataclass(frozen=True)
class QuotasConfig:
    enabled: bool = False
    #: "none": counters in this process only (one instance); "redis://HOST:PORT/DB",
    #: "rediss://..." or "unix:///path/redis.sock": a Valkey/Redis server every instance shares.
    store: str = "none"
    #: seconds a store command may take before the store counts as unavailable
    store_timeout: float = 0.25
    #: seconds the circuit breaker keeps an unavailable store out before trying it again
    store_retry_interval: float = 5.0
    #: while the store is unavailable: "memory" counts per instance (fail open for quotas);
    #: "defer" answers the store_unavailable reply (a 4xx) to every authenticated message
    on_store_error: Literal["memory", "defer"] = "memory"
    #: while the store is unavailable, a login seen suspended at most this long ago stays so
    suspended_stale_if_error: float = 86400.0
    #: a read-only answer at RCPT for a login already over a quota (nothing is counted there)
    early_refusal: bool = False
    #: logins (canonical, lowercased) and "@domain" entries never limited
    exempt: tuple[str, ...] = ()
    #: an attribute of the login's LDAP entry holding its own limits, e.g.
    #: "messages_per_hour=100,recipients_per_day=2000" (keys not set: from the config's)
    ldap_attribute: str = ""
    #: what a suspended login's message gets: "hold" (Postfix's hold queue) or "defer"
    suspended_action: Literal["hold", "defer"] = "hold"
    over_quota_reply: str = (
        "452 4.7.1 Sending quota exceeded for {login}: {limit} ({used} of {max}); "
        "try again in {retry}"
    )
    too_many_recipients_reply: str = (
        "452 4.5.3 Too many recipients for one message (at most {max}); send the rest in "
        "another message"
    )
    suspended_defer_reply: str = (
        "451 4.7.1 Sending from {login} is suspended; contact your provider"
    )
    suspended_hold_text: str = "login suspended by policyd"
    store_unavailable_reply: str = "451 4.3.0 Temporary quota lookup failure, please try again"
    #: notifications (suspension, first quota hit in a period) go to this address ("" = none)
    notify: str = ""
    #: also send each notification to the login itself when the login is a mail address
    notify_user: bool = False
    #: at most one notification per login and cause (suspended, each limit) in this many s
    notify_period: float = 86400.0
    limits: QuotaLimits = field(default_factory=QuotaLimits)
    compromise: CompromiseConfig = field(default_factory=CompromiseConfig)
    #: "example.org" -> limits for every login of that domain (keys not set: from [quotas.limits])
    domains: Mapping[str, QuotaLimits] = field(default_factory=lambda: types.MappingProxyType({}))
    #: canonical login -> its limits (keys not set: from the domain's, else [quotas.limits])
    logins: Mapping[str, QuotaLimits] = field(default_factory=lambda: types.MappingProxyType({}))

    def limits_for(self, login: str) -> QuotaLimits:
        """The limits of a canonical login: its own override, else its domain's, else the
        defaults (each override table already carries the values it did not set)."""
        own = self.logins.get(login)
        if own is not None:
            return own
        _, at, domain = login.rpartition("@")
        if at:
            dom = self.domains.get(domain)
            if dom is not None:
                return dom
        return self.limits

    def is_exempt(self, login: str) -> bool:
        if login in self.exempt:
            return True
        _, at, domain = login.rpartition("@")
        return bool(at) and ("@" + domain) in self.exempt


_REPLY_RE = re.compile(r"^4\d\d 4\.\d{1,3}\.\d{1,3} \S.*$")
_STORE_RE = re.compile(r"^(none|rediss?://\S+|unix://\S+)$")
#: placeholders each reply may use
PLACEHOLDERS: Mapping[str, frozenset[str]] = types.MappingProxyType(
    {
        "over_quota_reply": frozenset({"login", "limit", "used", "max", "cost", "retry"}),
        "too_many_recipients_reply": frozenset({"login", "max"}),
        "suspended_defer_reply": frozenset({"login"}),
        "store_unavailable_reply": frozenset({"login"}),
    }
)


def read_quotas(ctx: TableReader, raw: Any) -> QuotasConfig:
    """The [quotas] table (None: absent) -> QuotasConfig. Raises ConfigError."""
    s = ctx.source
    if raw is None:
        return QuotasConfig()
    if not isinstance(raw, dict):
        raise ConfigError(s, "quotas", "must be a table")
    raw = dict(raw)
    domains_raw = raw.pop("domains", {})
    logins_raw = raw.pop("logins", {})
    cfg: QuotasConfig = ctx.build(QuotasConfig, raw, "quotas")
    domains = _overrides(ctx, domains_raw, "quotas.domains", cfg.limits, {})
    logins = _overrides(ctx, logins_raw, "quotas.logins", cfg.limits, domains)
    cfg = replace(
        cfg,
        exempt=tuple(e.strip().lower() for e in cfg.exempt),
        domains=types.MappingProxyType(domains),
        logins=types.MappingProxyType(logins),
    )
    _check(cfg, s)
    return cfg


def _overrides(
    ctx: TableReader,
    raw: Any,
    prefix: str,
    base: QuotaLimits,
    domains: Mapping[str, QuotaLimits],
) -> dict[str, QuotaLimits]:
    if not isinstance(raw, dict):
        raise ConfigError(ctx.source, prefix, "must be a table of tables")
    out: dict[str, QuotaLimits] = {}
    for name, body in raw.items():
        key = f"{prefix}.{name}"
        if not isinstance(body, dict):
            raise ConfigError(ctx.source, key, "must be a table")
        lowered = name.strip().lower()
        if not lowered or any(ch.isspace() for ch in lowered):
            raise ConfigError(ctx.source, key, "must name a domain or a login")
        # start from the domain's limits for a login of a domain with an override
        start = base
        _, at, domain = lowered.rpartition("@")
        if at and domain in domains:
            start = domains[domain]
        ctx.build(QuotaLimits, body, key)  # (unknown keys and types are errors)
        values = {f.name: body.get(f.name, getattr(start, f.name)) for f in fields(QuotaLimits)}
        out[lowered] = QuotaLimits(**values)
        _check_limits(out[lowered], ctx.source, key)
    return out


def _check_limits(lim: QuotaLimits, source: str, prefix: str) -> None:
    for f in fields(QuotaLimits):
        if getattr(lim, f.name) < 0:
            raise ConfigError(source, f"{prefix}.{f.name}", "must not be negative (0 = no limit)")


def _check(cfg: QuotasConfig, s: str) -> None:
    if cfg.ldap_attribute and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,63}", cfg.ldap_attribute):
        raise ConfigError(s, "quotas.ldap_attribute", "must be an LDAP attribute name (or empty)")
    if not _STORE_RE.match(cfg.store):
        raise ConfigError(
            s,
            "quotas.store",
            'must be "none", "redis://HOST:PORT/DB", "rediss://..." or "unix:///PATH"',
        )
    if cfg.store != "none":
        try:
            parse_store_url(cfg.store).ssl_context()
        except (ValueError, OSError) as e:  # (ssl.SSLError is an OSError: a file not PEM)
            raise ConfigError(s, "quotas.store", f"{e}") from None
    for key in ("store_timeout", "store_retry_interval"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(s, f"quotas.{key}", "must be greater than 0")
    if cfg.suspended_stale_if_error < 0:
        raise ConfigError(s, "quotas.suspended_stale_if_error", "must not be negative")
    _check_limits(cfg.limits, s, "quotas.limits")
    for key, allowed in PLACEHOLDERS.items():
        text = getattr(cfg, key)
        if not _REPLY_RE.match(text) or "\n" in text or "\r" in text:
            raise ConfigError(
                s,
                f"quotas.{key}",
                "must be '4xx 4.X.Y text' on one line: a quota answer is always temporary",
            )
        check_template(s, f"quotas.{key}", text, set(allowed))
    hold = cfg.suspended_hold_text
    if not hold.strip() or not hold.isprintable():
        raise ConfigError(s, "quotas.suspended_hold_text", "must be printable text on one line")
    if cfg.notify_period <= 0:
        raise ConfigError(s, "quotas.notify_period", "must be greater than 0")
    if cfg.notify and "@" not in cfg.notify:
        raise ConfigError(s, "quotas.notify", "must be a mail address (or empty)")
    c = cfg.compromise
    for key in ("window", "threshold"):
        if getattr(c, key) <= 0:
            raise ConfigError(s, f"quotas.compromise.{key}", "must be greater than 0")
    if c.geoip_database is not None:
        why = geoip_problem(c.geoip_database)
        if why:
            raise ConfigError(s, "quotas.compromise.geoip_database", why)
    for key in (
        "network_points",
        "burst_points",
        "not_owned_points",
        "null_sender_points",
        "country_points",
    ):
        if getattr(c, key) < 0:
            raise ConfigError(s, f"quotas.compromise.{key}", "must not be negative")
    if c.burst_messages < 0:
        raise ConfigError(s, "quotas.compromise.burst_messages", "must not be negative")


def geoip_problem(path: Path) -> str:
    """Why the MaxMind-format database at `path` cannot be used ("" when it can)."""
    try:
        import maxminddb
    except ImportError:
        return "needs python3-maxminddb (pip install maxminddb)"
    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        return f"cannot read {path}: {e}"
    reader.close()
    return ""
