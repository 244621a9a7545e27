"""Configuration: one TOML file loaded once into frozen dataclasses.

Every key is documented in conf/policyd.toml. Unknown keys and bad values are errors that name
the file, the key and why. Paths are resolved relative to the config file's directory.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from policyd.addresses import AddressRules, InvalidDomain, idna_domain, normalize_domain
from policyd.config.ldap import LdapConfig as LdapConfig
from policyd.config.ldap import check_ldap
from policyd.config.listen import parse_listen
from policyd.config.quotas import QuotasConfig, read_quotas
from policyd.config.replies import PLACEHOLDERS, check_template
from policyd.config.tables import ConfigError as ConfigError
from policyd.config.tables import TableReader
from policyd.config.verification import VerificationConfig, check_verification
from policyd.config.web import WebConfig as WebConfig
from policyd.config.web import check_web
from policyd.config.workers import check_workers
from policyd.core import limits
from policyd.core.profile import ProfileConfig as ProfileConfig
from policyd.core.profile import RepliesConfig as RepliesConfig

#: Where the installed daemon reads its config when neither --config nor $POLICYD_CONFIG
#: names one.
DEFAULT_CONFIG = Path("/etc/policyd/policyd.toml")


def config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path:
    """--config, else $POLICYD_CONFIG, else DEFAULT_CONFIG."""
    if explicit is not None:
        return explicit
    return Path(environ.get("POLICYD_CONFIG") or DEFAULT_CONFIG)


# ---------------------------------------------------------------------------------------------
# Schema. Field defaults are the documented defaults (conf/policyd.toml repeats them).


@dataclass(frozen=True)
class ServerConfig:
    #: "HOST:PORT", "[V6]:PORT" or "unix:/path". Overridden by `serve --listen`.
    listen: tuple[str, ...] = ("127.0.0.1:10040",)
    unix_socket_mode: str = "0660"
    max_connections: int = limits.DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = limits.DEFAULT_IDLE_TIMEOUT
    drain_timeout: float = limits.DEFAULT_DRAIN_TIMEOUT
    workers: int | str = 1  # processes serving the listeners (config/workers.py)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    target: Literal["stderr", "syslog"] = "stderr"
    syslog_address: str = "/dev/log"
    syslog_facility: str = "mail"


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False
    listen: str = "127.0.0.1:9108"


@dataclass(frozen=True)
class NetworksConfig:
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class AddressesConfig:
    case_sensitive_localpart: bool = False
    extension_delimiters: str = "+"
    realms: tuple[str, ...] = ()
    case_sensitive_login: bool = False
    #: Mirrors of the Postfix parameters of the same names (see conf/policyd.toml).
    smtputf8_enable: bool = True
    swap_bangpath: bool = True
    allow_percent_hack: bool = True
    owner_request_special: bool = True
    mydestination: tuple[str, ...] = ()

    def rules(self) -> AddressRules:
        return AddressRules(
            case_sensitive_localpart=self.case_sensitive_localpart,
            extension_delimiters=self.extension_delimiters,
            realms=frozenset(normalize_domain(r) for r in self.realms),
            case_sensitive_login=self.case_sensitive_login,
            smtputf8=self.smtputf8_enable,
            swap_bangpath=self.swap_bangpath,
            percent_hack=self.allow_percent_hack,
            owner_request_special=self.owner_request_special,
            mydestination=frozenset(idna_domain(d) for d in self.mydestination),
        )


@dataclass(frozen=True)
class DirectoryConfig:
    backend: Literal["file", "ldap"] = "file"
    #: The embedded directory file (backend "file").
    file: Path | None = None
    #: Overall deadline for one lookup; past it the request gets the 451.
    lookup_deadline: float = limits.DEFAULT_LOOKUP_DEADLINE
    #: Threads running blocking directory calls.
    threads: int = limits.DEFAULT_LOOKUP_THREADS


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    positive_ttl: float = 300.0
    negative_ttl: float = 60.0
    max_entries: int = 100_000
    #: While the directory is down, answer from data at most this old (seconds); 0 = never.
    stale_if_error: float = 3600.0


@dataclass(frozen=True)
class MilterConfig:
    #: pymilter socket spec: "inet:PORT@HOST", "inet6:PORT@HOST" or "unix:/path".
    listen: str = "unix:/run/policyd-milter/milter.sock"
    #: The profile whose mode, replies and protect_local_senders the milter applies
    #: ("" = policy.default_profile).
    profile: str = ""
    timeout: int = 60


@dataclass(frozen=True)
class PolicyConfig:
    default_profile: str = "submission"


#: The built-in profiles: always there. A [profiles.NAME] table of one of these names changes
#: only the keys it sets (the others keep these values); another name starts from
#: ProfileConfig's defaults (role submission, no ports).
BUILTIN_PROFILES: Final[Mapping[str, ProfileConfig]] = types.MappingProxyType(
    {
        "submission": ProfileConfig(name="submission", role="submission", ports=(587,)),
        "mx": ProfileConfig(name="mx", role="mx", ports=(25,), protect_local_senders=True),
    }
)

#: The defaults of directory.file and networks.files, next to the config file. A ranges file
#: that is only there by default may be missing (no allocated ranges); a listed one may not.
DEFAULT_DIRECTORY_FILE: Final = "senders.txt"
DEFAULT_RANGES_FILE: Final = "ranges.txt"


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    networks: NetworksConfig = field(default_factory=NetworksConfig)
    addresses: AddressesConfig = field(default_factory=AddressesConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    ldap: LdapConfig = field(default_factory=LdapConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    web: WebConfig = field(default_factory=WebConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    profiles: Mapping[str, ProfileConfig] = field(
        default_factory=lambda: types.MappingProxyType(dict(BUILTIN_PROFILES))
    )

    def profile(self, name: str) -> ProfileConfig:
        return self.profiles[name]

    def milter_profile(self) -> ProfileConfig:
        """milter.profile, or policy.default_profile when that is ""."""
        return self.profiles[self.milter.profile or self.policy.default_profile]


# ---------------------------------------------------------------------------------------------
# Loader


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises ConfigError naming file, key and why."""
    p = Path(path)
    source = str(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(source, "", f"cannot read: {e.strerror or e}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(source, "", f"not UTF-8: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "", f"TOML syntax error: {e}") from e
    return config_from_dict(data, source=source, base_dir=p.resolve().parent)


def config_from_dict(data: Mapping[str, Any], source: str, base_dir: Path) -> Config:
    ctx = TableReader(source, base_dir)
    data = dict(data)
    profiles_raw = data.pop("profiles", None)
    quotas = read_quotas(ctx, data.pop("quotas", None))
    cfg: Config = ctx.build(Config, data, "", extra={"source": source, "quotas": quotas})
    cfg = _default_files(cfg, data, base_dir)
    # The built-in profiles are always there; a table of their name changes only its keys.
    profiles: dict[str, ProfileConfig] = dict(BUILTIN_PROFILES)
    if profiles_raw is not None:
        if not isinstance(profiles_raw, dict):
            raise ConfigError(source, "profiles", "must be a table of [profiles.NAME] tables")
        for name, body in profiles_raw.items():
            key = f"profiles.{name}"
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ConfigError(source, key, "profile names may use letters, digits, _ . -")
            if not isinstance(body, dict):
                raise ConfigError(source, key, "must be a table")
            built: ProfileConfig = ctx.build(ProfileConfig, body, key, extra={"name": name})
            base = BUILTIN_PROFILES.get(name)
            if base is not None:  # keys the table leaves out keep the built-in's values
                built = dataclasses.replace(base, **{k: getattr(built, k) for k in body})
            profiles[name] = built
    _check(cfg, profiles, ctx)
    return dataclasses.replace(cfg, profiles=types.MappingProxyType(profiles))


def _default_files(cfg: Config, data: Mapping[str, Any], base_dir: Path) -> Config:
    """directory.file and networks.files left out: the files next to the config."""
    directory, networks = data.get("directory") or {}, data.get("networks") or {}
    if isinstance(directory, dict) and "file" not in directory:
        d = dataclasses.replace(cfg.directory, file=base_dir / DEFAULT_DIRECTORY_FILE)
        cfg = dataclasses.replace(cfg, directory=d)
    if isinstance(networks, dict) and "files" not in networks:
        ranges = base_dir / DEFAULT_RANGES_FILE
        n = dataclasses.replace(cfg.networks, files=(ranges,) if ranges.exists() else ())
        cfg = dataclasses.replace(cfg, networks=n)
    return cfg


_REPLY_RE = re.compile(r"^[45]\d\d [45]\.\d{1,3}\.\d{1,3} \S.*$")
_ACTIONS = {"OK", "DUNNO", "PERMIT", "RELAY"}


def _check(cfg: Config, profiles: Mapping[str, ProfileConfig], ctx: TableReader) -> None:
    s = ctx.source
    if cfg.quotas.ldap_attribute and cfg.directory.backend != "ldap":
        raise ConfigError(s, "quotas.ldap_attribute", 'needs directory.backend = "ldap"')
    for i, spec in enumerate(cfg.server.listen):
        try:
            parse_listen(spec)
        except ValueError as e:
            raise ConfigError(s, f"server.listen[{i}]", str(e)) from None
    if not re.fullmatch(r"0?[0-7]{3}", cfg.server.unix_socket_mode):
        raise ConfigError(s, "server.unix_socket_mode", 'must be an octal mode such as "0660"')
    for key, value in (
        ("server.max_connections", cfg.server.max_connections),
        ("server.idle_timeout", cfg.server.idle_timeout),
        ("server.drain_timeout", cfg.server.drain_timeout),
        ("directory.lookup_deadline", cfg.directory.lookup_deadline),
        ("directory.threads", cfg.directory.threads),
        ("cache.max_entries", cfg.cache.max_entries),
        ("ldap.connect_timeout", cfg.ldap.connect_timeout),
        ("ldap.receive_timeout", cfg.ldap.receive_timeout),
        ("milter.timeout", cfg.milter.timeout),
    ):
        if value <= 0:
            raise ConfigError(s, key, "must be greater than 0")
    for key, value in (
        ("cache.positive_ttl", cfg.cache.positive_ttl),
        ("cache.negative_ttl", cfg.cache.negative_ttl),
        ("cache.stale_if_error", cfg.cache.stale_if_error),
    ):
        if value < 0:
            raise ConfigError(s, key, "must not be negative")
    if cfg.server.idle_timeout <= 300:
        raise ConfigError(
            s,
            "server.idle_timeout",
            "must be longer than Postfix's smtpd_policy_service_max_idle (300 s)",
        )
    try:
        parse_listen(cfg.metrics.listen)
    except ValueError as e:
        raise ConfigError(s, "metrics.listen", str(e)) from None
    if not re.fullmatch(r"(unix:/.+|inet6?:\d+(@.+)?)", cfg.milter.listen):
        raise ConfigError(
            s, "milter.listen", "must be inet:PORT@HOST, inet6:PORT@HOST or unix:/PATH"
        )
    if cfg.directory.backend == "file" and cfg.directory.file is None:
        raise ConfigError(s, "directory.file", 'is required when directory.backend = "file"')
    if any(ch.isspace() or ch == "@" for ch in cfg.addresses.extension_delimiters):
        raise ConfigError(s, "addresses.extension_delimiters", 'may not contain spaces or "@"')
    for i, d in enumerate(cfg.addresses.mydestination):
        try:
            if not idna_domain(d) or "@" in d or any(ch.isspace() for ch in d.strip()):
                raise InvalidDomain("empty, or not a domain")
        except InvalidDomain as e:
            raise ConfigError(
                s, f"addresses.mydestination[{i}]", f"{d!r} is not a domain ({e})"
            ) from None
    check_ldap(cfg.ldap, s)
    check_workers(s, cfg.server.workers, cfg.metrics.enabled, cfg.quotas)
    check_web(cfg.web, s)
    check_verification(cfg.verification, cfg.directory.backend, s)
    if cfg.policy.default_profile not in profiles:
        raise ConfigError(
            s,
            "policy.default_profile",
            f"names no profile (have: {', '.join(sorted(profiles))})",
        )
    if cfg.milter.profile and cfg.milter.profile not in profiles:
        raise ConfigError(
            s, "milter.profile", f"names no profile (have: {', '.join(sorted(profiles))})"
        )
    seen_ports: dict[int, str] = {}
    for name, prof in profiles.items():
        base = f"profiles.{name}"
        if prof.accept_action.upper() not in _ACTIONS:
            raise ConfigError(
                s, f"{base}.accept_action", f"must be one of {', '.join(sorted(_ACTIONS))}"
            )
        for port in prof.ports:
            if not 0 < port <= 65535:
                raise ConfigError(s, f"{base}.ports", f"{port} is not a TCP port")
            if port in seen_ports:
                raise ConfigError(
                    s, f"{base}.ports", f"port {port} is already used by profile {seen_ports[port]}"
                )
            seen_ports[port] = name
        for f in fields(RepliesConfig):
            text = getattr(prof.replies, f.name)
            key = f"{base}.replies.{f.name}"
            if not _REPLY_RE.match(text):
                raise ConfigError(
                    s,
                    key,
                    "must be '4xx|5xx X.Y.Z text' (a 4xx or 5xx code, an enhanced code, a text)",
                )
            if text[0] != text[4]:
                raise ConfigError(
                    s, key, "the enhanced code's class must match the SMTP code's first digit"
                )
            if f.name == "directory_unavailable" and text[0] != "4":
                raise ConfigError(
                    s, key, "must be a 4xx: a directory failure must never reject permanently"
                )
            if "\n" in text or "\r" in text:
                raise ConfigError(s, key, "may not contain line breaks")
            check_template(s, key, text, PLACEHOLDERS[f.name])
