"""The one small interface every directory backend implements."""

from __future__ import annotations

from typing import Protocol


class DirectoryError(Exception):
    """A directory could not be set up (bad file, bad config). Raised at startup/reload."""


class DirectoryUnavailable(Exception):
    """The directory cannot answer right now. The engine turns this into a 451 4.3.0."""


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
        """The stable identity of the login's entry, as one string in the set (LDAP: its
        entryUUID, else its DN; the file: the line that first names the login); empty when
        the login is unknown (or ambiguous). A verified address, and a web session, belong to
        that identity: a new entry under the same login is someone else. Raises
        DirectoryUnavailable."""
        ...

    def close(self) -> None:
        """Release connections. Called on shutdown and when a reload replaces the backend."""
        ...
