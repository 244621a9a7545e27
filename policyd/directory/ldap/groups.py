"""Who may send as a group's address: the reverse group lookup of owners_of (for
protect_local_senders at the MX, and for a login that owns only a less specific key).

Two ways, chosen by the config:

* Derived (the default, OpenLDAP groupOfNames/posixGroup): the groups holding the key are found
  with `group_filter` split around its membership assertion ("(member={dn})" or
  "(memberUid={login})", filters.reverse_groups), the assertion replaced by the address test on
  `group_attributes`; their members are reported by `owner_login_attribute`, read from the
  member DN when its first RDN is that attribute (uid=alice,...), otherwise from the member's
  entry (at most _MAX_MEMBER_READS reads per call).
* Templates of their own (Active Directory, where `group_filter` is the nested
  "(member:1.2.840.113556.1.4.1941:={dn})" and no assertion can be turned around):
  `group_address_filter` finds the groups holding {address} (with AD's "smtp:" prefix where the
  attribute needs one: "(proxyAddresses=smtp:{address})" matches SMTP: and smtp: values), and
  `group_member_filter`, when set, finds every owner under `user_base` from the group's DN
  {group} ("(memberOf:1.2.840.113556.1.4.1941:={group})": nested members, the directory
  resolving the nesting), with a paged search, so more than the server's page size (AD: 1000)
  are all found. Without `group_member_filter`, the members are read as in the derived way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from policyd.addresses import AddressRules, canonical_login
from policyd.config import LdapConfig
from policyd.directory.ldap.entries import Found, entry_logins, entry_values
from policyd.directory.ldap.filters import ReverseGroups, escape_value, first_rdn, render_filter

log = logging.getLogger("policyd.directory.ldap.directory")

#: owners_of reads at most this many group-member entries per call.
_MAX_MEMBER_READS: Final = 100


#: (filter, attributes) -> the entries found, all pages, no size limit. Raises
#: DirectoryUnavailable.
Search = Callable[[str, list[str]], Found]


@dataclass(frozen=True)
class GroupOwners:
    """The reverse group lookup of an LdapDirectory, over the searches it is given."""

    cfg: LdapConfig
    rules: AddressRules
    group_attrs: list[str]
    reverse: ReverseGroups | None
    #: under group_base, and under user_base
    search_groups: Search
    search_users: Search
    #: (dn, attributes) -> that one entry; none (not an error) when it does not exist
    read_entry: Search

    def owners_of(self, key: str) -> set[str]:
        """The logins a group holding `key` makes its owners."""
        if self.cfg.group_address_filter:
            local, _, domain = key.rpartition("@")
            filt = render_filter(
                self.cfg.group_address_filter, address=key, localpart=local, domain=domain
            )
        else:
            rev = self.reverse
            assert rev is not None
            tests = "".join(f"({a}={escape_value(key)})" for a in self.group_attrs)
            filt = f"{rev.prefix}(|{tests}){rev.suffix}"
        member_attr = self.reverse.member_attribute if self.reverse else "member"
        attrs = [] if self.cfg.group_member_filter else [member_attr]
        found = self.search_groups(filt, attrs)
        if found.truncated:
            log.warning("LDAP: owners_of(%s): the group search hit a size limit", key)
        if self.cfg.group_member_filter:
            return self._nested_owners(key, [g["dn"] for g in found.entries])
        return self._member_owners(key, found, member_attr)

    def _nested_owners(self, key: str, groups: list[str]) -> set[str]:
        login_attr = self.cfg.owner_login_attribute
        owners: set[str] = set()
        for dn in groups:
            filt = render_filter(self.cfg.group_member_filter, group=dn)
            found = self.search_users(filt, [login_attr])
            if found.truncated:
                log.warning("LDAP: owners_of(%s): members of %s hit a size limit", key, dn)
            for e in found.entries:
                owners.update(entry_logins(e, login_attr, self.rules))
        return owners

    def _member_owners(self, key: str, found: Found, member_attr: str) -> set[str]:
        dns = self.reverse.members_are_dns if self.reverse else True
        owners: set[str] = set()
        login_attr = self.cfg.owner_login_attribute.lower()
        to_read: list[str] = []
        for g in found.entries:
            for member in entry_values(g, [member_attr]):
                if not dns:
                    if member.strip():
                        owners.add(canonical_login(member, self.rules))
                    continue
                rdn = first_rdn(member)
                if rdn is not None and rdn[0].lower() == login_attr:
                    owners.add(canonical_login(rdn[1], self.rules))
                else:
                    to_read.append(member)
        if len(to_read) > _MAX_MEMBER_READS:
            log.warning(
                "LDAP: owners_of(%s): %d group members need an entry read; reading the first %d",
                key,
                len(to_read),
                _MAX_MEMBER_READS,
            )
        for dn in to_read[:_MAX_MEMBER_READS]:
            # (a dangling member: no entry)
            read = self.read_entry(dn, [self.cfg.owner_login_attribute])
            for e in read.entries:
                owners.update(entry_logins(e, self.cfg.owner_login_attribute, self.rules))
        return owners
