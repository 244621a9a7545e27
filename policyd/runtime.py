"""Everything built from one Config: ranges, directory, lookups. Replaced whole on reload."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from policyd.addresses import AddressRules
from policyd.config import Config
from policyd.directory.base import Directory
from policyd.directory.cache import CachedLookups, LookupRunner
from policyd.directory.lookups import DirectLookups
from policyd.directory.static import StaticDirectory
from policyd.networks import Networks

if TYPE_CHECKING:
    from policyd.verification.lookups import SourcedLookups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    config: Config
    networks: Networks
    rules: AddressRules
    directory: Directory
    #: the one way to ask for owned addresses: for a blocking (LDAP) directory the thread
    #: pool, deadline and cache; for the file directory direct calls
    lookups: CachedLookups | DirectLookups | SourcedLookups

    def close(self) -> None:
        self.lookups.close()


def make_directory(config: Config, rules: AddressRules, *, read_secrets: bool = True) -> Directory:
    """The configured backend. Raises DirectoryError (or ConfigError) on a bad setup.
    read_secrets=False: the LDAP bind password is read at the first connection, not now."""
    if config.directory.backend == "ldap":
        from policyd.directory.ldap import LdapDirectory

        return LdapDirectory(config.ldap, rules, read_password=read_secrets)
    assert config.directory.file is not None  # checked by config validation
    return StaticDirectory.load(config.directory.file, rules)


def build_runtime(config: Config, *, read_secrets: bool = True) -> Runtime:
    """Load ranges and the directory. Raises NetworksError / DirectoryError with file and line."""
    rules = config.addresses.rules()
    networks = Networks.load(config.networks.files) if config.networks.files else Networks.empty()
    for rng in networks.wide[:5]:
        log.warning(
            "allocated range %s (%s) is wider than an IPv4 /8 or IPv6 /16: every client in it "
            "may relay without SMTP AUTH. Intended?",
            rng.pattern,
            rng.source,
        )
    directory = make_directory(config, rules, read_secrets=read_secrets)
    if config.directory.backend == "ldap" and read_secrets and len(rules.realms) > 1:
        from policyd.directory.ldap import LdapDirectory
        from policyd.directory.ldap.realms import check_realms

        assert isinstance(directory, LdapDirectory)
        try:  # (the file directory checks this itself, at load)
            check_realms(directory)
        except Exception:
            directory.close()
            raise
    lookups: CachedLookups | DirectLookups | SourcedLookups
    if directory.blocking:
        runner = LookupRunner(directory, config.directory.threads, config.directory.lookup_deadline)
        lookups = CachedLookups(runner, config.cache)
    else:
        lookups = DirectLookups(directory)
    if config.verification.enabled:  # verified sender addresses count as owned (issue 13)
        from policyd.verification.lookups import with_verified_source

        lookups = with_verified_source(config, lookups)
    return Runtime(config, networks, rules, directory, lookups)
