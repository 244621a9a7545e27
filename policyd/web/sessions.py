"""Web sessions and login throttling, stored in SQLite (blocking: call from a thread).

Tables of their own (`web_*`) in a file of their own (`web.database`, by default
/var/lib/policyd/web.sqlite: every page view writes a session's last use, and a write to the
verification database would make the policy service and the milter re-read the verified set),
with a schema version of their own (`web_schema`). A session id is 256 random bits; only its SHA-256
is stored, so a copy of the database holds no usable cookie. Each session carries its CSRF
token. A session ends at logout, after `idle` seconds unused, or `absolute` seconds after it
began, whichever comes first. Login failures are kept per client address and per login for
`window` seconds; passwords are never stored or logged. A login attempt is counted as a
failure *before* the password is checked, in the same transaction that checks the limits
(`begin_attempt`), and taken back when the password was right (`succeeded`): parallel attempts
cannot pass the limit between the check and the count.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The newest schema version of the web tables; migrations bring older files up to it.
SCHEMA_VERSION = 2

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE web_sessions (
            id_hash TEXT PRIMARY KEY,
            login TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created REAL NOT NULL,
            last_seen REAL NOT NULL
        )""",
        "CREATE INDEX web_sessions_login ON web_sessions(login)",
        """CREATE TABLE web_login_failures (
            kind TEXT NOT NULL CHECK (kind IN ('ip', 'login')),
            key TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX web_login_failures_key ON web_login_failures(kind, key, at)",
    ),
    # the directory identity of the entry that logged in (see Directory.identity_of): the
    # session is that entry's, and ends when the entry is gone, replaced or its password
    # changed. NULL (a session from before): ends at its next request.
    2: ("ALTER TABLE web_sessions ADD COLUMN identity TEXT",),
}


class StoreError(Exception):
    """The session database cannot be used (locked, read-only, full, corrupt)."""


@dataclass(frozen=True)
class Session:
    login: str
    csrf: str
    created: float
    last_seen: float
    #: the directory's identity_of(login) at login, as one string (see identity_text)
    identity: str | None = None


def identity_text(identity: frozenset[str]) -> str | None:
    """identity_of's answer as the one string a session keeps (None: an unknown login)."""
    return "\n".join(sorted(identity)) if identity else None


@dataclass(frozen=True)
class Attempt:
    """A login attempt counted as a failure until `succeeded` takes it back."""

    ip: str
    #: rowids of the web_login_failures rows this attempt added
    rows: tuple[int, ...]


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


class SessionStore:
    """Thread-safe: one SQLite connection per thread, WAL mode, a busy timeout."""

    def __init__(
        self,
        path: Path,
        *,
        idle: float,
        absolute: float,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.idle, self.absolute, self.window = idle, absolute, window
        self.clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._migrate()

    # -- plumbing ----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: {e}") from None
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _run(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from None

    def _migrate(self) -> None:
        def go(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS web_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM web_schema").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: web schema version {version} is newer than this policyd "
                    f"({SCHEMA_VERSION})"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[v]:
                    conn.execute(stmt)
            if row is None:
                conn.execute("INSERT INTO web_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                conn.execute("UPDATE web_schema SET version = ?", (SCHEMA_VERSION,))

        self._run(go)

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()

    # -- sessions ----------------------------------------------------------------------

    def create(self, login: str, identity: str | None = None) -> tuple[str, Session]:
        """A new session for `login` (whose directory entry is `identity`): (cookie value,
        session)."""
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        s = Session(login, secrets.token_urlsafe(32), now, now, identity)

        def go(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO web_sessions (id_hash, login, csrf, created, last_seen, identity) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_hash(sid), s.login, s.csrf, s.created, s.last_seen, s.identity),
            )
            # Expired sessions of anyone go on each login: the table stays small.
            conn.execute(
                "DELETE FROM web_sessions WHERE last_seen < ? OR created < ?",
                (now - self.idle, now - self.absolute),
            )

        self._run(go)
        return sid, s

    def get(self, sid: str) -> Session | None:
        """The live session for this cookie value (and it counts as used now), else None.
        An expired session is deleted."""
        if not sid or len(sid) > 100:
            return None
        h = _hash(sid)
        now = self.clock()

        def go(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT login, csrf, created, last_seen, identity FROM web_sessions "
                "WHERE id_hash = ?",
                (h,),
            ).fetchone()
            if row is None:
                return None
            login, csrf, created, last_seen = str(row[0]), str(row[1]), row[2], row[3]
            identity = None if row[4] is None else str(row[4])
            if now - last_seen > self.idle or now - created > self.absolute:
                conn.execute("DELETE FROM web_sessions WHERE id_hash = ?", (h,))
                return None
            conn.execute("UPDATE web_sessions SET last_seen = ? WHERE id_hash = ?", (now, h))
            return Session(login, csrf, float(created), now, identity)

        out = self._run(go)
        assert out is None or isinstance(out, Session)
        return out

    def delete(self, sid: str) -> None:
        h = _hash(sid)
        self._run(lambda conn: conn.execute("DELETE FROM web_sessions WHERE id_hash = ?", (h,)))

    def count(self) -> int:
        row = self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM web_sessions").fetchone())
        assert isinstance(row, tuple)
        return int(row[0])

    # -- login throttling --------------------------------------------------------------

    def failures(self, ip: str, login: str) -> tuple[int, int]:
        """Failed logins within the window: (from this client address, for this login)."""
        since = self.clock() - self.window

        def go(conn: sqlite3.Connection) -> tuple[int, int]:
            out = []
            for kind, key in (("ip", ip), ("login", login)):
                row = conn.execute(
                    "SELECT COUNT(*) FROM web_login_failures WHERE kind = ? AND key = ? "
                    "AND at >= ?",
                    (kind, key, since),
                ).fetchone()
                out.append(int(row[0]))
            return out[0], out[1]

        res = self._run(go)
        assert isinstance(res, tuple)
        return res

    def begin_attempt(
        self, ip: str, login: str, max_per_ip: int, max_per_login: int
    ) -> Attempt | None:
        """Counts a login attempt as a failure, unless the client address or the login has
        reached its limit within the window (then None, and nothing is counted). One
        transaction (BEGIN IMMEDIATE): of any number of parallel attempts at most the limit
        get through."""
        now = self.clock()

        def go(conn: sqlite3.Connection) -> Attempt | None:
            n_ip, n_login = self._counts(conn, ip, login, now - self.window)
            if n_ip >= max_per_ip or n_login >= max_per_login:
                return None
            rows = tuple(
                int(
                    conn.execute(
                        "INSERT INTO web_login_failures (kind, key, at) VALUES (?, ?, ?)",
                        (kind, key, now),
                    ).lastrowid
                    or 0
                )
                for kind, key in (("ip", ip), ("login", login))
            )
            conn.execute("DELETE FROM web_login_failures WHERE at < ?", (now - self.window,))
            return Attempt(ip, rows)

        out = self._run(go)
        assert out is None or isinstance(out, Attempt)
        return out

    def also_login(self, attempt: Attempt, login: str, max_per_login: int) -> Attempt | None:
        """Counts the attempt against another key of the same login as well (the directory's
        own login, once the entry is found): None (and nothing counted) when that login has
        reached its limit."""
        now = self.clock()

        def go(conn: sqlite3.Connection) -> Attempt | None:
            row = conn.execute(
                "SELECT COUNT(*) FROM web_login_failures WHERE kind = 'login' AND key = ? "
                "AND at >= ?",
                (login, now - self.window),
            ).fetchone()
            if int(row[0]) >= max_per_login:
                return None
            rid = conn.execute(
                "INSERT INTO web_login_failures (kind, key, at) VALUES ('login', ?, ?)",
                (login, now),
            ).lastrowid
            return Attempt(attempt.ip, (*attempt.rows, int(rid or 0)))

        out = self._run(go)
        assert out is None or isinstance(out, Attempt)
        return out

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the attempt does not count as a failure."""

        def go(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM web_login_failures WHERE rowid = ?", [(r,) for r in attempt.rows]
            )

        self._run(go)

    def _counts(
        self, conn: sqlite3.Connection, ip: str, login: str, since: float
    ) -> tuple[int, int]:
        out = []
        for kind, key in (("ip", ip), ("login", login)):
            row = conn.execute(
                "SELECT COUNT(*) FROM web_login_failures WHERE kind = ? AND key = ? AND at >= ?",
                (kind, key, since),
            ).fetchone()
            out.append(int(row[0]))
        return out[0], out[1]

    def record_failure(self, ip: str, login: str) -> None:
        now = self.clock()

        def go(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO web_login_failures (kind, key, at) VALUES (?, ?, ?)",
                [("ip", ip, now), ("login", login, now)],
            )
            conn.execute("DELETE FROM web_login_failures WHERE at < ?", (now - self.window,))

        self._run(go)
