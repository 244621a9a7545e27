"""The verification database: SQLite (stdlib sqlite3) in WAL mode, a versioned schema.

Requests, the audit log, the suppression list and the rate counters (and, with store =
"sqlite", the verified addresses: the requests in state "verified"). Every change runs in one
`BEGIN IMMEDIATE` transaction (`Store.transaction()`), so writers on this host, in any process,
take turns and a check-then-update is never raced. Every sqlite3 error becomes
StoreUnavailable with a sentence for a person (locked, read-only, full, cannot open, damaged).
Blocking: front ends call it in a thread with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from policyd.verification.queries import Row, Tx

__all__ = ["Row", "Store", "StoreUnavailable", "Tx"]

#: Schema versions: MIGRATIONS[n] takes a database from user_version n to n + 1.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        login TEXT NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL,
        method TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        verified_at REAL,
        token_hash TEXT UNIQUE,
        token_expires REAL,
        code_salt TEXT,
        code_hash TEXT,
        code_expires REAL,
        tries INTEGER NOT NULL DEFAULT 0,
        mail_sent REAL,
        last_error TEXT
    );
    CREATE UNIQUE INDEX requests_active ON requests (login, address)
        WHERE state IN ('pending', 'verified');
    CREATE INDEX requests_address ON requests (address);
    CREATE INDEX requests_state ON requests (state, updated);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        ip TEXT,
        login TEXT,
        address TEXT,
        request_id INTEGER,
        event TEXT NOT NULL,
        old_state TEXT,
        new_state TEXT,
        detail TEXT
    );
    CREATE INDEX audit_login ON audit (login, at);
    CREATE TABLE suppressed (
        address TEXT PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE events (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX events_key ON events (kind, key, at);
    """,
    # 1 -> 2: the directory identity of the login's entry when the request was made (LDAP:
    # entryUUID or DN; the file directory: the login's line). A verified row counts only while
    # the directory still gives the login that identity. NULL: a row from before.
    """
    ALTER TABLE requests ADD COLUMN identity TEXT;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class StoreUnavailable(Exception):
    """The database cannot be read or written now. The message is for a person."""


def _read_only(path: Path) -> bool:
    """The file (or, if it does not exist, its directory) cannot be written: modes, or a
    read-only mount (access() reports EROFS even for root)."""
    target = path if path.exists() else path.parent
    return target.exists() and not os.access(target, os.W_OK)


def describe(e: BaseException, path: Path, busy_timeout: float) -> str:
    text = str(e).lower()
    if _read_only(path) or (path.exists() and not os.access(path.parent, os.W_OK)):
        return (
            f"the verification database {path} is read-only (it or its directory cannot be written)"
        )
    if "locked" in text or "busy" in text:
        return (
            f"the verification database {path} is locked (still busy after {busy_timeout:g} s); "
            "try again"
        )
    if "readonly" in text or "read-only" in text:
        return f"the verification database {path} is read-only"
    if "full" in text:
        return f"the verification database {path} cannot grow: the disk is full"
    if "unable to open" in text:
        return f"the verification database {path} cannot be opened (missing directory or rights)"
    if "malformed" in text or "not a database" in text:
        return f"the verification database {path} is damaged ({e})"
    return f"the verification database {path} failed: {e}"


class Store:
    """One connection to the database file, shared by threads (one transaction at a time)."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout,
                isolation_level=None,  # autocommit: transactions are explicit BEGIN IMMEDIATE
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(describe(e, self.path, busy_timeout)) from None
        try:
            self._migrate()
        except sqlite3.Error as e:
            self._conn.close()
            raise StoreUnavailable(describe(e, self.path, busy_timeout)) from None

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    def _migrate(self) -> None:
        c = self._conn
        version = int(c.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the verification database {self.path} has schema version {version}, newer "
                f"than this policyd ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            if str(c.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                c.execute("PRAGMA journal_mode=WAL")
            for n in range(version, SCHEMA_VERSION):
                c.execute("BEGIN IMMEDIATE")
                try:
                    # (re-read under the lock: another process may have migrated meanwhile)
                    if int(c.execute("PRAGMA user_version").fetchone()[0]) == n:
                        for stmt in MIGRATIONS[n].split(";"):
                            if stmt.strip():
                                c.execute(stmt)
                        c.execute(f"PRAGMA user_version = {n + 1}")
                    c.execute("COMMIT")
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception). sqlite3 errors, from BEGIN
        to COMMIT, leave as StoreUnavailable; other exceptions pass after the rollback."""
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._unavailable(e) from None
            try:
                yield Tx(c)
            except BaseException as e:
                self._rollback(c)
                if isinstance(e, sqlite3.Error):
                    raise self._unavailable(e) from None
                raise
            try:
                c.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback(c)
                raise self._unavailable(e) from None

    @contextlib.contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only snapshot (BEGIN DEFERRED; never takes the write lock)."""
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN")
                try:
                    yield Tx(c)
                finally:
                    c.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback(c)
                raise self._unavailable(e) from None

    @staticmethod
    def _rollback(c: sqlite3.Connection) -> None:
        """ROLLBACK after a failure; a failing ROLLBACK changes nothing (the first error counts)."""
        with contextlib.suppress(sqlite3.Error):
            c.execute("ROLLBACK")

    def _unavailable(self, e: sqlite3.Error) -> StoreUnavailable:
        return StoreUnavailable(describe(e, self.path, self.busy_timeout))

    def data_version(self) -> int | None:
        """PRAGMA data_version (changes when another connection committed), or None when the
        connection is busy in another thread right now."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as e:
            raise StoreUnavailable(describe(e, self.path, self.busy_timeout)) from None
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()
