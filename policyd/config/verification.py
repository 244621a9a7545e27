"""The [verification] section: extra sender addresses a user proves are theirs.

Registered in policyd.config (Config.verification); documented key by key, with its default, in
conf/policyd.toml. `check_verification` is the section's validation (it raises ConfigError,
naming file and key, like every section's check).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from policyd.config.replies import placeholder_problem
from policyd.config.tables import ConfigError

#: Placeholders the mail templates may use. None of them carries text a user typed.
SUBJECT_PLACEHOLDERS = frozenset({"site_name"})
BODY_PLACEHOLDERS = frozenset(
    {"site_name", "primary_address", "time", "code", "link", "code_minutes", "link_hours"}
)

DEFAULT_SUBJECT = "Confirm that {site_name} may send mail as this address"
DEFAULT_BODY = """\
Someone signed in to {site_name} as {primary_address} asked, at {time}, to send mail with
this address as the sender.

If that was you, enter this code where you asked (valid for {code_minutes} minutes):

    {code}

or open this page and press Confirm (valid for {link_hours} hours):

    {link}

If it was not you, open the page and press "This was not me", or ignore this mail: nothing
changes unless the request is confirmed.
"""


@dataclass(frozen=True)
class VerificationMailConfig:
    #: "smtp": submit to smtp_host:smtp_port (the local Postfix). "sendmail": run
    #: sendmail_command with the message on stdin (the envelope sender is added as -f).
    submission: Literal["smtp", "sendmail"] = "smtp"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_timeout: float = 10.0
    sendmail_command: tuple[str, ...] = ("/usr/sbin/sendmail", "-t", "-i")
    #: The From: of the confirmation mail (the site name is its display name).
    from_address: str = "postmaster@example.org"
    #: The envelope sender (where bounces go); "" = from_address.
    bounce_address: str = ""
    subject: str = DEFAULT_SUBJECT
    body: str = DEFAULT_BODY


@dataclass(frozen=True)
class VerificationLdapConfig:
    #: The multi-valued attribute holding verified addresses (conf/ldap/policyd-senders.schema).
    attribute: str = "policydSenderAddress"
    #: The auxiliary class allowing it; added to an entry that lacks it.
    object_class: str = "policydSender"
    #: The separate writer bind (its ACL may write only `attribute`); the lookups keep the
    #: read-only ldap.bind_dn.
    writer_bind_dn: str = ""
    writer_password_file: Path | None = None
    #: Name of a systemd credential (LoadCredential=) holding the writer's password.
    writer_password_credential: str = ""


@dataclass(frozen=True)
class VerificationLimitsConfig:
    pending_per_login: int = 5
    requests_per_login_per_day: int = 10
    #: At most one mail to one address per this many seconds ...
    mail_interval_per_address: float = 600.0
    #: ... and at most this many a day.
    mails_per_address_per_day: int = 3
    #: All confirmation mails of this host, per hour.
    mails_per_hour: int = 100


@dataclass(frozen=True)
class VerificationConfig:
    enabled: bool = False
    #: SQLite file: requests, audit log, suppression list, rate counters (and, with
    #: store = "sqlite", the verified addresses).
    database: Path = Path("/var/lib/policyd/senders.sqlite")
    #: Where verified addresses live: "sqlite" (this host) or "ldap" (the user's entry, seen
    #: by every instance reading the directory).
    store: Literal["sqlite", "ldap"] = "sqlite"
    #: Our own domains: never verifiable (admins assign them). [] = the domains in the file
    #: directory; with directory.backend = "ldap" it must be set.
    local_domains: tuple[str, ...] = ()
    site_name: str = "Example Mail"
    #: The landing page; the link is this URL with "?token=..." appended.
    link_base_url: str = "https://mail.example.org/senders/confirm"
    #: Seconds a link stays valid (the request expires with it), and a code.
    token_ttl: float = 259200.0
    code_ttl: float = 1800.0
    #: Wrong codes before the request is cancelled.
    code_tries: int = 5
    #: Seconds to wait for a locked database before giving up.
    busy_timeout: float = 5.0
    mail: VerificationMailConfig = field(default_factory=VerificationMailConfig)
    ldap: VerificationLdapConfig = field(default_factory=VerificationLdapConfig)
    limits: VerificationLimitsConfig = field(default_factory=VerificationLimitsConfig)


_ADDR_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_ATTR_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


def check_verification(vc: VerificationConfig, directory_backend: str, source: str) -> None:
    """Raise ConfigError (naming file and key) for the first bad value of [verification]."""
    p = "verification"
    for key, value in (
        ("token_ttl", vc.token_ttl),
        ("code_ttl", vc.code_ttl),
        ("code_tries", vc.code_tries),
        ("busy_timeout", vc.busy_timeout),
        ("mail.smtp_timeout", vc.mail.smtp_timeout),
        ("limits.pending_per_login", vc.limits.pending_per_login),
        ("limits.requests_per_login_per_day", vc.limits.requests_per_login_per_day),
        ("limits.mails_per_address_per_day", vc.limits.mails_per_address_per_day),
        ("limits.mails_per_hour", vc.limits.mails_per_hour),
    ):
        if value <= 0:
            raise ConfigError(source, f"{p}.{key}", "must be greater than 0")
    if vc.limits.mail_interval_per_address < 0:
        raise ConfigError(source, f"{p}.limits.mail_interval_per_address", "must not be negative")
    if vc.code_ttl > vc.token_ttl:
        raise ConfigError(source, f"{p}.code_ttl", "must not be longer than verification.token_ttl")
    if not 0 < vc.mail.smtp_port <= 65535:
        raise ConfigError(source, f"{p}.mail.smtp_port", "must be a TCP port (1..65535)")
    if vc.mail.submission == "sendmail" and not vc.mail.sendmail_command:
        raise ConfigError(
            source, f"{p}.mail.sendmail_command", 'is required when mail.submission = "sendmail"'
        )
    for key, addr in (
        ("mail.from_address", vc.mail.from_address),
        ("mail.bounce_address", vc.mail.bounce_address),
    ):
        if (addr or key == "mail.from_address") and not _ADDR_RE.match(addr):
            raise ConfigError(
                source, f"{p}.{key}", f"{addr!r} is not a plain address (local@domain.tld)"
            )
    for key, text in (("site_name", vc.site_name), ("mail.subject", vc.mail.subject)):
        if not text.strip() or any(not ch.isprintable() for ch in text):
            raise ConfigError(source, f"{p}.{key}", "must be one line of printable text")
    if not re.fullmatch(r"https?://[^\s?#]+(\?[^\s#]*)?", vc.link_base_url):
        raise ConfigError(source, f"{p}.link_base_url", "must be an http:// or https:// URL")
    for key, text, allowed in (
        ("mail.subject", vc.mail.subject, SUBJECT_PLACEHOLDERS),
        ("mail.body", vc.mail.body, BODY_PLACEHOLDERS),
    ):
        why = placeholder_problem(text, allowed)
        if why:
            raise ConfigError(source, f"{p}.{key}", why)
    if "{code}" not in vc.mail.body or "{link}" not in vc.mail.body:
        raise ConfigError(source, f"{p}.mail.body", "must contain {code} and {link}")
    for i, d in enumerate(vc.local_domains):
        if not d or "@" in d or any(ch.isspace() for ch in d):
            raise ConfigError(source, f"{p}.local_domains[{i}]", f"{d!r} is not a domain")
    if not _ATTR_RE.match(vc.ldap.attribute):
        raise ConfigError(source, f"{p}.ldap.attribute", "must be an LDAP attribute name")
    if not _ATTR_RE.match(vc.ldap.object_class):
        raise ConfigError(source, f"{p}.ldap.object_class", "must be an LDAP object class name")
    if vc.ldap.attribute.lower() == "maillocaladdress":
        raise ConfigError(
            source,
            f"{p}.ldap.attribute",
            "must not be mailLocalAddress: Postfix setups use it as a recipient alias, so a "
            "verified foreign address would start receiving mail",
        )
    if vc.enabled and vc.store == "ldap":
        if directory_backend != "ldap":
            raise ConfigError(source, f"{p}.store", '"ldap" needs directory.backend = "ldap"')
        if not vc.ldap.writer_bind_dn:
            raise ConfigError(
                source, f"{p}.ldap.writer_bind_dn", 'is required when verification.store = "ldap"'
            )
        if not (vc.ldap.writer_password_file or vc.ldap.writer_password_credential):
            raise ConfigError(
                source,
                f"{p}.ldap.writer_bind_dn",
                "needs verification.ldap.writer_password_file or writer_password_credential",
            )
    if vc.enabled and directory_backend == "ldap" and not vc.local_domains:
        raise ConfigError(
            source,
            f"{p}.local_domains",
            'must be set with directory.backend = "ldap" (our own domains are never '
            "verifiable: list them)",
        )
