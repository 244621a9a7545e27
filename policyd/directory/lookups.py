"""The one interface every front end asks for owned addresses: `Lookups`.

The runtime always holds one Lookups object, chosen in one place (`runtime.build_runtime`):
`CachedLookups` (directory/cache.py) for a blocking directory (LDAP: thread pool, deadline,
cache), `DirectLookups` for an in-memory one (the file). The policy service, the milter and the
CLI only call the four methods below, plus the helpers at the end of this module that apply
Postfix's ownership rule over them.

`peek_*` answer without blocking: a value, or None when the answer needs a slow lookup (then
the `async` method of the same name gets it). Every method raises DirectoryUnavailable when the
directory cannot answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from policyd.addresses import AddressRules, candidates, for_wider_keys, keys_to_resolve
from policyd.directory.base import Directory


class Lookups(Protocol):
    def peek_addresses(self, login: str) -> frozenset[str] | None:
        """addresses_of(login) when known without blocking, else None."""
        ...

    def peek_owners(self, key: str, include_verified: bool = True) -> frozenset[str] | None:
        """owners_of(key) when known without blocking, else None."""
        ...

    async def addresses_of(self, login: str) -> frozenset[str]:
        """The addresses (and "@domain" entries) the canonical login owns."""
        ...

    async def owners_of(self, key: str, include_verified: bool = True) -> frozenset[str]:
        """The canonical logins that own exactly this key (an address, its extension-stripped
        form or "@domain"). include_verified=False: only those the directory names, not
        those who verified the address by mail (protect_local_senders asks that: a foreign
        address a user verified is still mail the foreign provider may deliver to our MX)."""
        ...

    def peek_identity(self, login: str) -> frozenset[str] | None:
        """identity_of(login) when known without blocking, else None."""
        ...

    async def identity_of(self, login: str) -> frozenset[str]:
        """The directory's identity of the login's entry ({one string}; empty: unknown)."""
        ...

    def close(self) -> None: ...


class DirectLookups:
    """Lookups for a directory that answers from memory (the file directory): every answer is
    known at once, so there is no pool, no deadline and no cache."""

    #: (no cache: the metrics report zeros)
    stats = None
    runner = None

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.peek_addresses = directory.addresses_of

    def peek_owners(self, key: str, include_verified: bool = True) -> frozenset[str]:
        return self.directory.owners_of(key)

    def peek_identity(self, login: str) -> frozenset[str]:
        return self.directory.identity_of(login)

    def __len__(self) -> int:
        return 0

    async def addresses_of(self, login: str) -> frozenset[str]:
        return self.directory.addresses_of(login)

    async def owners_of(self, key: str, include_verified: bool = True) -> frozenset[str]:
        return self.directory.owners_of(key)

    async def identity_of(self, login: str) -> frozenset[str]:
        return self.directory.identity_of(login)

    def close(self) -> None:
        self.directory.close()


# -- Postfix's ownership rule over the lookups ------------------------------------------------


def peek_key_owners(lookups: Lookups, keys: Iterable[str]) -> dict[str, frozenset[str]] | None:
    """owners_of each key, or None when any of them needs a slow lookup."""
    out: dict[str, frozenset[str]] = {}
    for key in keys:
        found = lookups.peek_owners(key)
        if found is None:
            return None
        out[key] = found
    return out


async def key_owners(lookups: Lookups, keys: Iterable[str]) -> dict[str, frozenset[str]]:
    """owners_of each key (a cached key costs no lookup)."""
    out: dict[str, frozenset[str]] = {}
    for key in dict.fromkeys(keys):  # (a loop: an await alone in its statement, see build.py)
        out[key] = await lookups.owners_of(key)
    return out


def peek_sender_owners(lookups: Lookups, sender: str, rules: AddressRules) -> frozenset[str] | None:
    """`sender_owners` when known without blocking, else None."""
    for key in candidates(sender, rules):
        found = lookups.peek_owners(key, include_verified=False)
        if found is None:
            return None
        if found:
            return found
    return frozenset()


async def sender_owners(lookups: Lookups, sender: str, rules: AddressRules) -> frozenset[str]:
    """The directory's owners of the most specific key of `sender` that has any owner (empty:
    nobody owns it), as Postfix's smtpd_sender_login_maps search finds them: who may send as
    it for protect_local_senders (verified senders left out, see Lookups.owners_of)."""
    for key in candidates(sender, rules):
        found = await lookups.owners_of(key, include_verified=False)
        if found:
            return found
    return frozenset()


#: What decide_header_from needs: (owned by the login, owners of the keys it needs, owners of
#: each mailbox for a session without login).
HeaderFacts = tuple[
    frozenset[str] | None, dict[str, frozenset[str]] | None, dict[str, frozenset[str]] | None
]


async def header_facts(
    lookups: Lookups, login: str, boxes: Sequence[str], rules: AddressRules
) -> HeaderFacts:
    """The lookups decide_header_from needs for these mailboxes (`login` canonical, or "" for
    an unauthenticated session). Raises DirectoryUnavailable."""
    if not login:
        owners: dict[str, frozenset[str]] = {}
        for box in boxes:  # (an await alone in its statement: see policyd/build.py)
            owners[box] = await sender_owners(lookups, box, rules)
        return None, None, owners
    owned = await lookups.addresses_of(login)
    wide = for_wider_keys(owned)
    needed = [k for box in boxes for k in keys_to_resolve(wide, box, rules)]
    found = await key_owners(lookups, needed)
    return owned, found, None


def peek_header_facts(
    lookups: Lookups, login: str, boxes: Sequence[str], rules: AddressRules
) -> HeaderFacts | None:
    """`header_facts` when every answer is known without blocking (the in-memory file
    directory, fresh cache entries), else None: the same lookups, through the peeks."""
    if not login:
        owners: dict[str, frozenset[str]] = {}
        for box in boxes:
            found = peek_sender_owners(lookups, box, rules)
            if found is None:
                return None
            owners[box] = found
        return None, None, owners
    owned = lookups.peek_addresses(login)
    if owned is None:
        return None
    wide = for_wider_keys(owned)
    keys = peek_key_owners(lookups, [k for box in boxes for k in keys_to_resolve(wide, box, rules)])
    if keys is None:
        return None
    return owned, keys, None
