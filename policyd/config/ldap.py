"""The [ldap] section: its keys (defaults documented in conf/policyd.toml) and its rules, one
place each for config validation and policyd.directory.ldap alike. Pure: no ldap3 here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from policyd.config.replies import check_template
from policyd.config.tables import ConfigError


@dataclass(frozen=True)
class LdapConfig:
    servers: tuple[str, ...] = ("ldap://127.0.0.1",)
    start_tls: bool = False
    tls_validate: bool = True
    ca_file: Path | None = None
    bind_dn: str = ""
    bind_password_file: Path | None = None
    #: Name of a systemd credential (LoadCredential=) holding the bind password.
    bind_password_credential: str = ""
    connect_timeout: int = 2
    receive_timeout: int = 2
    user_base: str = "dc=example,dc=org"
    user_scope: Literal["base", "one", "sub"] = "sub"
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={login}))"
    user_attributes: tuple[str, ...] = ("mail", "mailLocalAddress")
    group_base: str = ""
    group_scope: Literal["base", "one", "sub"] = "sub"
    group_filter: str = "(&(objectClass=groupOfNames)(member={dn}))"
    group_attributes: tuple[str, ...] = ("mailLocalAddress",)
    owner_filter: str = (
        "(&(objectClass=inetOrgPerson)(|(mail={address})(mailLocalAddress={address})))"
    )
    owner_login_attribute: str = "uid"
    #: The groups holding an address, for owners_of ("" = derived from group_filter).
    group_address_filter: str = ""
    #: The owners of one of those groups, under user_base ("" = the group's member values).
    group_member_filter: str = ""

    # The [ldap] rules that both config validation and policyd.directory.ldap apply live here,
    # one method each, so that neither side keeps its own copy.

    def filter_templates(self) -> tuple[tuple[str, str, frozenset[str]], ...]:
        """(key, template, the placeholders it may use) of each ldap.*_filter."""
        return (
            ("user_filter", self.user_filter, frozenset({"login", "localpart", "domain"})),
            ("group_filter", self.group_filter, frozenset({"dn", "login"})),
            ("owner_filter", self.owner_filter, frozenset({"address", "localpart", "domain"})),
        ) + tuple(
            (key, tmpl, names)
            for key, tmpl, names in (
                (
                    "group_address_filter",
                    self.group_address_filter,
                    frozenset({"address", "localpart", "domain"}),
                ),
                ("group_member_filter", self.group_member_filter, frozenset({"group"})),
            )
            if tmpl
        )

    def servers_problem(self) -> str | None:
        """Why ldap.servers cannot be used (None when it can)."""
        return None if self.servers else "needs at least one server"

    def bind_password_problem(self) -> str | None:
        """Why the bind password cannot be found (None when it can, or no bind_dn is set)."""
        if self.bind_dn and not (self.bind_password_file or self.bind_password_credential):
            return (
                "needs ldap.bind_password_file or ldap.bind_password_credential "
                "(never a password in this file)"
            )
        return None


def check_ldap(cfg: LdapConfig, source: str) -> None:
    """Raise ConfigError (naming file and key) for an [ldap] section that cannot work."""
    why = cfg.bind_password_problem()
    if why is not None:
        raise ConfigError(source, "ldap.bind_dn", why)
    for i, url in enumerate(cfg.servers):
        if not re.fullmatch(r"(ldap|ldaps|ldapi)://\S*", url):
            raise ConfigError(
                source, f"ldap.servers[{i}]", f"{url!r} is not an ldap://, ldaps:// or ldapi:// URL"
            )
    why = cfg.servers_problem()
    if why is not None:
        raise ConfigError(source, "ldap.servers", why)
    for name, tmpl, allowed in cfg.filter_templates():
        key = f"ldap.{name}"
        check_template(source, key, tmpl, set(allowed))
        if not (tmpl.startswith("(") and tmpl.endswith(")")):
            raise ConfigError(source, key, "an LDAP filter must be enclosed in parentheses")
