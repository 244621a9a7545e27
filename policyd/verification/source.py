"""Verified addresses as one more ownership source behind the lookups.

An in-memory copy of the store's verified addresses: `addresses_of(login)` and
`owners_of(key)` (exact, normalised keys; verified addresses are always full addresses) are
cheap and run on the event loop. `stale()` is a cheap change check (SQLite PRAGMA
data_version, which moves when any other connection commits); `refresh()` re-reads the store
(blocking: the lookups run it in their thread pool with the deadline) and raises
DirectoryUnavailable when it cannot, so a policy decision never passes on a store it could not
read. With store = "ldap", `revoked_of(login)` lists addresses revoked here lately, which a
still-cached directory value must stop counting at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from policyd.directory.base import DirectoryUnavailable
from policyd.verification import states
from policyd.verification.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

_EMPTY: frozenset[str] = frozenset()


class VerifiedSource:
    def __init__(
        self,
        database: Path,
        *,
        busy_timeout: float = 5.0,
        revoke_window: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = Path(database)
        self.busy_timeout = busy_timeout
        #: seconds a revocation is reported by revoked_of (0: never, the store = "sqlite" case)
        self.revoke_window = revoke_window
        self.clock = clock
        self._store: Store | None = None
        self._version: int | None = None
        self._lock = threading.Lock()
        self._addresses: dict[str, frozenset[str]] = {}
        self._owners: dict[str, frozenset[str]] = {}
        self._revoked: dict[str, frozenset[str]] = {}
        self._how: dict[tuple[str, str], tuple[float, str]] = {}
        self._identity: dict[tuple[str, str], str | None] = {}
        self._revoked_until = float("inf")
        self._inode: tuple[int, int] | None = None
        #: when the file's identity was last checked (a stat costs more than the change check
        #: itself; replacing the database file is an admin's act, seen within a second)
        self._inode_checked = 0.0

    # -- the source interface -------------------------------------------------------------

    def addresses_of(self, login: str) -> frozenset[str]:
        return self._addresses.get(login, _EMPTY)

    def owners_of(self, key: str) -> frozenset[str]:
        return self._owners.get(key, _EMPTY)

    def revoked_of(self, login: str) -> frozenset[str]:
        return self._revoked.get(login, _EMPTY)

    def identity(self, login: str, address: str) -> str | None:
        """The directory identity the login had when it verified the address (None: a row
        from before identities were recorded)."""
        return self._identity.get((login, address))

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.database)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def stale(self) -> bool:
        store = self._store
        if store is None or self._version is None:
            return True
        now = time.monotonic()
        if now - self._inode_checked >= 1.0:
            self._inode_checked = now
            if self._file_id() != self._inode:  # replaced, moved or deleted underneath us
                return True
        if self.clock() >= self._revoked_until:
            return True
        try:
            version = store.data_version()
        except StoreUnavailable:
            return True
        return version is None or version != self._version

    def refresh(self) -> None:
        """Re-read the verified (and lately revoked) addresses. DirectoryUnavailable if the
        store cannot be read: the lookup then answers 451, never "owned"."""
        with self._lock:
            try:
                if self._store is not None and self._file_id() != self._inode:
                    self._store.close()
                    self._store = None
                if self._store is None:
                    self._version = None
                    self._store = Store(self.database, self.busy_timeout)
                    self._inode = self._file_id()
                version = self._store.data_version()
                with self._store.reading() as tx:
                    rows = tx.rows(state=states.VERIFIED)
                    revoked = tx.rows(state=states.REVOKED) if self.revoke_window > 0 else []
            except StoreUnavailable as e:
                raise DirectoryUnavailable(f"verified senders: {e}") from None
            addresses: dict[str, set[str]] = {}
            owners: dict[str, set[str]] = {}
            how: dict[tuple[str, str], tuple[float, str]] = {}
            identity: dict[tuple[str, str], str | None] = {}
            for r in rows:
                addresses.setdefault(r.login, set()).add(r.address)
                owners.setdefault(r.address, set()).add(r.login)
                how[(r.login, r.address)] = (r.verified_at or r.updated, r.method or "?")
                identity[(r.login, r.address)] = r.identity
            now = self.clock()
            gone: dict[str, set[str]] = {}
            until = float("inf")
            for r in revoked:
                ends = r.updated + self.revoke_window
                if ends > now and r.address not in addresses.get(r.login, ()):
                    gone.setdefault(r.login, set()).add(r.address)
                    until = min(until, ends)
            self._addresses = {k: frozenset(v) for k, v in addresses.items()}
            self._owners = {k: frozenset(v) for k, v in owners.items()}
            self._revoked = {k: frozenset(v) for k, v in gone.items()}
            self._how = how
            self._identity = identity
            self._revoked_until = until
            self._version = version if version is not None else -1
        # (bench/run.py --only webload counts these: each one is a full re-read)
        log.debug("verified senders: re-read %d addresses", len(rows))

    def explain(self, login: str, address: str) -> str | None:
        """ "verified 2026-12-01 by code" for a verified address of the login, else None."""
        hit = self._how.get((login, address))
        if hit is None:
            return None
        day = datetime.fromtimestamp(hit[0], tz=UTC).strftime("%Y-%m-%d")
        return f"verified {day} by {hit[1]}"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
