"""The queries of the verification database, inside one transaction (store.Store opens it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policyd.verification.views import AuditView, Lifecycle

#: (in the order of Row's fields: Lifecycle's first)
REQUEST_COLUMNS = (
    "login, address, state, method, created, updated, verified_at, token_hash, "
    "token_expires, code_salt, code_hash, code_expires, tries, mail_sent, last_error, id, identity"
)


@dataclass(frozen=True)
class Row(Lifecycle):
    token_hash: str | None
    token_expires: float | None
    code_salt: str | None
    code_hash: str | None
    code_expires: float | None
    tries: int
    mail_sent: float | None
    last_error: str | None
    id: int
    #: the directory identity of the login's entry when requested (None: a row from before)
    identity: str | None


class Tx:
    """The queries, inside one transaction (see Store.transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn
        #: log lines (format, args) to emit once the transaction has committed
        self.logs: list[tuple[str, tuple[object, ...]]] = []

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [Row(*r) for r in self.c.execute(sql, args).fetchall()]

    def active(self, login: str, address: str) -> Row | None:
        rows = self._rows(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE login = ? AND address = ? "
            "AND state IN ('pending', 'verified')",
            (login, address),
        )
        return rows[0] if rows else None

    def by_token_hash(self, token_hash: str) -> Row | None:
        rows = self._rows(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE token_hash = ?", (token_hash,)
        )
        return rows[0] if rows else None

    def by_id(self, rid: int) -> Row | None:
        rows = self._rows(f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?", (rid,))
        return rows[0] if rows else None

    def insert(self, **values: Any) -> int:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self.c.execute(
            f"INSERT INTO requests ({cols}) VALUES ({marks})", list(values.values())
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update(self, rid: int, expect_state: str, **values: Any) -> bool:
        """Update one request if it is still in `expect_state`; False if it no longer is."""
        sets = ", ".join(f"{k} = ?" for k in values)
        cur = self.c.execute(
            f"UPDATE requests SET {sets} WHERE id = ? AND state = ?",
            [*values.values(), rid, expect_state],
        )
        return cur.rowcount == 1

    def rows(self, login: str | None = None, state: str | None = None) -> list[Row]:
        where, args = [], []
        if login is not None:
            where.append("login = ?")
            args.append(login)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {REQUEST_COLUMNS} FROM requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._rows(sql + " ORDER BY login, address, id", args)

    def due_to_expire(self, now: float) -> list[Row]:
        return self._rows(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE state = 'pending' AND token_expires < ?",
            (now,),
        )

    def pending_count(self, login: str) -> int:
        return int(
            self.c.execute(
                "SELECT count(*) FROM requests WHERE login = ? AND state = 'pending'", (login,)
            ).fetchone()[0]
        )

    def audit(
        self,
        *,
        at: float,
        actor: str,
        ip: str | None,
        event: str,
        login: str | None = None,
        address: str | None = None,
        request_id: int | None = None,
        old_state: str | None = None,
        new_state: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.c.execute(
            "INSERT INTO audit (at, actor, ip, login, address, request_id, event, old_state, "
            "new_state, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, actor, ip, login, address, request_id, event, old_state, new_state, detail),
        )

    def audit_rows(self, login: str | None = None) -> list[AuditView]:
        sql = "SELECT at, actor, ip, login, address, event, old_state, new_state, detail FROM audit"
        args: list[Any] = []
        if login is not None:
            sql += " WHERE login = ?"
            args.append(login)
        return [AuditView(*r) for r in self.c.execute(sql + " ORDER BY id", args).fetchall()]

    def is_suppressed(self, address: str) -> bool:
        return (
            self.c.execute("SELECT 1 FROM suppressed WHERE address = ?", (address,)).fetchone()
            is not None
        )

    def suppress(self, address: str, at: float, actor: str, reason: str) -> bool:
        cur = self.c.execute(
            "INSERT OR IGNORE INTO suppressed (address, at, actor, reason) VALUES (?, ?, ?, ?)",
            (address, at, actor, reason),
        )
        return cur.rowcount == 1

    def unsuppress(self, address: str) -> bool:
        return self.c.execute("DELETE FROM suppressed WHERE address = ?", (address,)).rowcount == 1

    def suppressed(self) -> list[tuple[str, float, str, str]]:
        return [
            (str(a), float(t), str(w), str(r))
            for a, t, w, r in self.c.execute(
                "SELECT address, at, actor, reason FROM suppressed ORDER BY address"
            ).fetchall()
        ]

    # rate counters ---------------------------------------------------------------------

    def count_events(self, kind: str, key: str, since: float) -> int:
        return int(
            self.c.execute(
                "SELECT count(*) FROM events WHERE kind = ? AND key = ? AND at >= ?",
                (kind, key, since),
            ).fetchone()[0]
        )

    def last_event(self, kind: str, key: str) -> float | None:
        v = self.c.execute(
            "SELECT max(at) FROM events WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()[0]
        return None if v is None else float(v)

    def add_event(self, kind: str, key: str, at: float) -> None:
        self.c.execute("INSERT INTO events (kind, key, at) VALUES (?, ?, ?)", (kind, key, at))

    def purge(self, before: float, states: Sequence[str]) -> int:
        marks = ", ".join("?" for _ in states)
        n = self.c.execute(
            f"DELETE FROM requests WHERE state IN ({marks}) AND updated < ?", (*states, before)
        ).rowcount
        self.c.execute("DELETE FROM events WHERE at < ?", (before,))
        return int(n)
