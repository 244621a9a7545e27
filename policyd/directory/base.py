"""The one small interface every directory backend implements."""

from __future__ import annotations

from typing import Protocol


class DirectoryError(Exception):
    """A directory could not be set up (bad file, bad config). Raised at startup/reload."""


class DirectoryUnavailable(Exception):
    """The directory cannot answer right now. The engine turns this into a 451 4.3.0."""


#: identity_of values that do not name the entry (they change while it stays the same one)
_NOT_THE_ENTRY = ("pwdChangedTime=",)


def entry_id(identity: frozenset[str]) -> str | None:
    """The value of identity_of(login) that names the entry (None when there is none)."""
    for v in sorted(identity):
        if not v.startswith(_NOT_THE_ENTRY):
            return v
    return None


class Directory(Protocol):
    """A source of sender ownership.

    Logins passed in are already canonical (see addresses.canonical_login). Returned addresses
    are normalised with addresses.normalize_address (or are "@domain" entries, domain
    normalised), so the engine can match without knowing the backend.
    """

    #: True when calls block on I/O (LDAP): the server then runs them in its thread pool with a
    #: deadline. False for in-memory backends, which are called directly on the event loop.
    blocking: bool

    def addresses_of(self, login: str) -> frozenset[str]:
        """Addresses (and "@domain" entries) the login may send as; empty if the login is
        unknown. Raises DirectoryUnavailable when the backend cannot answer."""
        ...

    def owners_of(self, address: str) -> frozenset[str]:
        """Canonical logins that own exactly this normalised key: an address, its
        extension-stripped form, or "@domain" (no fallback from one to the next: the caller
        applies Postfix's most-specific-key rule, see addresses.owns). Raises
        DirectoryUnavailable."""
        ...

    def identity_of(self, login: str) -> frozenset[str]:
        """What identifies the login's entry; empty when the login is unknown (or ambiguous).
        One value names the entry (see `entry_id`: LDAP "entryUUID=<uuid>", else "dn=<dn>";
        the file: "line=<the line that first names the login>"); LDAP adds
        "pwdChangedTime=<t>" when the entry has one. A verified address belongs to the entry
        (a new entry under the same login is someone else); a web session to all of it (a
        changed password ends it). Raises DirectoryUnavailable."""
        ...

    def close(self) -> None:
        """Release connections. Called on shutdown and when a reload replaces the backend."""
        ...
