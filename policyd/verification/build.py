"""Putting the API together from a Config: store, mailer, writer, directory callbacks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from policyd.addresses import AddressRules, normalize_domain, split_address
from policyd.config import Config
from policyd.directory.base import Directory
from policyd.verification.mail import make_mailer
from policyd.verification.service import Verification, Writer
from policyd.verification.store import Store


def file_domains(path: Path) -> frozenset[str]:
    """The domains of the addresses in a file directory (conf/senders.txt format): the
    default local_domains with directory.backend = "file"."""
    out = set()
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0]
        _, colon, tail = line.partition(":")
        if not colon:
            continue
        for a in tail.replace(",", " ").split():
            domain = split_address(a)[1]
            if domain:
                out.add(normalize_domain(domain))
    return frozenset(out)


def local_domains(config: Config) -> frozenset[str]:
    vc = config.verification
    if vc.local_domains:
        return frozenset(normalize_domain(d) for d in vc.local_domains)
    if config.directory.backend == "file" and config.directory.file is not None:
        return file_domains(config.directory.file)
    return frozenset()  # (config validation refuses this with LDAP)


def primary_of(directory: Directory, rules: AddressRules) -> Callable[[str], str | None]:
    """The login's primary address as the directory has it: the address whose user part is
    the login, else the first full address in sorted order; None for an unknown login."""

    def primary(login: str) -> str | None:
        full = sorted(a for a in directory.addresses_of(login) if not a.startswith("@"))
        if not full:
            return None
        user = login.partition("@")[0]
        for a in full:
            if split_address(a)[0] == user:
                return a
        return full[0]

    return primary


def make_writer(config: Config) -> Writer | None:
    if config.verification.store != "ldap":
        return None
    from policyd.verification.ldap_writer import LdapWriter

    return LdapWriter(config.ldap, config.verification.ldap, config.addresses.rules())


def build(
    config: Config,
    directory: Directory,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> Verification:
    """The API for this config. Raises StoreUnavailable when the database cannot be opened."""
    vc = config.verification
    rules = config.addresses.rules()
    return Verification(
        config,
        store or Store(vc.database, vc.busy_timeout),
        make_mailer(vc),
        directory.addresses_of,
        primary_of(directory, rules),
        clock,
        local_domains=local_domains(config),
        writer=make_writer(config),
        directory=directory,
    )


def summary(config: Config) -> str:
    """One line for `policyd config-check`."""
    vc = config.verification
    if not vc.enabled:
        return "sender verification: off"
    where = (
        f"ldap attribute {vc.ldap.attribute} (writer {vc.ldap.writer_bind_dn})"
        if vc.store == "ldap"
        else "sqlite"
    )
    how = (
        f"sendmail {' '.join(vc.mail.sendmail_command)}"
        if vc.mail.submission == "sendmail"
        else f"smtp {vc.mail.smtp_host}:{vc.mail.smtp_port}"
    )
    doms = ", ".join(sorted(local_domains(config))) or "(none)"
    return (
        f"sender verification: on, database {vc.database}, verified addresses in {where}, "
        f"mail via {how} from {vc.mail.from_address}, local domains {doms}"
    )
