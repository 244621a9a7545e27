"""Who may have an address, as the verification API asks the directory: the request's address
normalised, the login's own addresses and directory identity, and the rule that the directory
(and local_domains) win over a verified address."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policyd.addresses import AddressRules, candidates, owned_by
from policyd.directory.base import Directory, DirectoryUnavailable, entry_id
from policyd.verification.normalize import BadAddress, in_domains, normalize_request
from policyd.verification.store import Row
from policyd.verification.views import Refused

DIRECTORY_DOWN = "The user directory cannot be reached; try again later."
LOCAL_DOMAIN = (
    "Addresses in our own domains are assigned by the administrators; ask your administrator."
)
#: (the same sentence whoever owns it: it never tells which login has the address)
MANAGED = (
    "This address is managed by the administrators (in the user directory); it cannot be "
    "verified here. Ask your administrator."
)


@dataclass(frozen=True)
class Ownership:
    rules: AddressRules
    local_domains: frozenset[str]
    #: owners_of (the directory wins) and identity_of (a verified address is the entry's)
    directory: Directory
    directory_addresses: Callable[[str], frozenset[str]]
    primary_address: Callable[[str], str | None]

    def address(self, address: str) -> str:
        """The requested address normalised; Refused when it may not be requested."""
        try:
            return normalize_request(address, self.rules)
        except BadAddress as e:
            raise Refused(e.code, e.message) from None

    def is_local(self, address: str) -> bool:
        return in_domains(address, self.local_domains)

    def already_owns(self, login: str, address: str) -> bool:
        """The directory already gives the login this address."""
        try:
            owned = self.directory_addresses(login)
        except DirectoryUnavailable as e:
            raise Refused("directory_unavailable", DIRECTORY_DOWN, str(e)) from None
        return owned_by(owned, address, self.rules)

    def identity(self, login: str) -> str:
        """The login's directory identity now; Refused("unknown_login") when the directory
        does not know the login (or finds it ambiguous)."""
        try:
            found = self.directory.identity_of(login)
        except DirectoryUnavailable as e:
            raise Refused("directory_unavailable", DIRECTORY_DOWN, str(e)) from None
        entry = entry_id(found)
        if entry is None:
            raise Refused("unknown_login", "This login is not in the user directory.")
        return entry

    def primary(self, login: str) -> str:
        """Where the confirmation mail's copy goes; Refused for a login without addresses."""
        primary = self.primary_address(login)
        if primary is None:
            raise Refused("unknown_login", "This login has no address in the user directory.")
        return primary

    def primary_or_none(self, login: str) -> str | None:
        try:
            return self.primary_address(login)
        except DirectoryUnavailable:
            return None

    def check_foreign(self, login: str, addr: str) -> None:
        """The directory wins: refuse an address in our own domains, or one whose exact key,
        extension-stripped key or "@domain" has an owner in the directory (other than this
        login, whose own addresses are refused earlier as already owned)."""
        if self.is_local(addr):
            raise Refused("local_domain", LOCAL_DOMAIN)
        for key in candidates(addr, self.rules):
            try:
                owners = self.directory.owners_of(key)
            except DirectoryUnavailable as e:
                raise Refused("directory_unavailable", DIRECTORY_DOWN, str(e)) from None
            if owners - {login}:
                raise Refused("directory_owned", MANAGED)

    def check_still_theirs(self, row: Row) -> None:
        """At confirm time: the entry that asked is still the login's, and the directory
        (or local_domains) has not taken the address since."""
        identity = self.identity(row.login)
        if row.identity is not None and row.identity != identity:
            raise Refused("unknown_login", "This login is not in the user directory.")
        self.check_foreign(row.login, row.address)

    def superseded(self, row: Row, identities: dict[str, frozenset[str]]) -> str | None:
        """Why a verified row no longer counts (the same rules as the verified source's, see
        verification/lookups.py), or None while it does. Raises DirectoryUnavailable."""
        if row.login not in identities:
            identities[row.login] = self.directory.identity_of(row.login)
        identity = identities[row.login]
        if not identity or (row.identity is not None and row.identity not in identity):
            return "the login's directory entry is gone, or is another entry now"
        if self.is_local(row.address):
            return "in verification.local_domains"
        for key in candidates(row.address, self.rules):
            if self.directory.owners_of(key) - {row.login}:
                return f"the directory owns {key}"
        return None
