"""Web sessions and login throttling on a real SQLite file, with a clock the test moves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from policyd.web.sessions import SCHEMA_VERSION, SessionStore, StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def store(tmp_path: Path, clock: Clock, **kw: float) -> SessionStore:
    args = {"idle": 60.0, "absolute": 600.0, "window": 300.0, **kw}
    return SessionStore(tmp_path / "s.sqlite", clock=clock, **args)


def test_a_session_lives_while_used_and_ends_after_the_idle_timeout(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    sid, sess = s.create("alice")
    for _ in range(5):
        clock.now += 59
        got = s.get(sid)
        assert got is not None and got.login == "alice" and got.csrf == sess.csrf
    clock.now += 61
    assert s.get(sid) is None
    assert s.count() == 0  # deleted, not just refused


def test_a_session_ends_at_the_absolute_timeout_even_when_used(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    sid, _ = s.create("alice")
    for _ in range(10):
        clock.now += 59
        assert s.get(sid) is not None
    clock.now += 11  # 601 s after it began
    assert s.get(sid) is None


def test_logout_deletes_the_session_and_other_ids_find_nothing(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    sid, _ = s.create("alice")
    other, _ = s.create("bob")
    assert s.get("not-a-session-id-" + "x" * 30) is None
    assert s.get("") is None and s.get("y" * 500) is None
    s.delete(sid)
    assert s.get(sid) is None
    got = s.get(other)
    assert got is not None and got.login == "bob"


def test_sessions_survive_a_restart_and_only_hashes_are_stored(tmp_path: Path) -> None:
    clock = Clock()
    sid, _ = store(tmp_path, clock).create("alice")
    again = store(tmp_path, clock)
    got = again.get(sid)
    assert got is not None and got.login == "alice"
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert sid not in dump


def test_login_failures_count_per_ip_and_per_login_within_the_window(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    for _ in range(3):
        s.record_failure("192.0.2.1", "alice")
    s.record_failure("192.0.2.2", "alice")
    s.record_failure("192.0.2.1", "bob")
    assert s.failures("192.0.2.1", "alice") == (4, 4)
    assert s.failures("192.0.2.2", "bob") == (1, 1)
    assert s.failures("198.51.100.9", "nobody") == (0, 0)
    clock.now += 301
    assert s.failures("192.0.2.1", "alice") == (0, 0)


def test_the_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    store(tmp_path, clock).close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("SELECT version FROM web_schema").fetchone() == (SCHEMA_VERSION,)
        db.execute("UPDATE web_schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        store(tmp_path, clock)


def test_a_file_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SessionStore(tmp_path / "missing-dir" / "s.sqlite", idle=1, absolute=2, window=1)


def test_parallel_attempts_get_through_at_most_the_limit(tmp_path: Path) -> None:
    import threading

    clock = Clock()
    s = store(tmp_path, clock)
    got: list[object] = []
    lock = threading.Lock()
    go = threading.Barrier(40)

    def attempt() -> None:
        go.wait()
        a = s.begin_attempt("192.0.2.1", "alice", 100, 5)
        with lock:
            got.append(a)

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(a is not None for a in got) == 5
    assert s.failures("192.0.2.1", "alice") == (5, 5)


def test_an_attempt_counts_until_it_succeeded_and_the_entrys_login_shares_it(
    tmp_path: Path,
) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    a = s.begin_attempt("192.0.2.1", "alice@example.org", 10, 2)
    assert a is not None and s.failures("192.0.2.1", "alice@example.org") == (1, 1)
    # the directory says the login is "alice": counted there too
    b = s.also_login(a, "alice", 2)
    assert b is not None and s.failures("192.0.2.1", "alice") == (1, 1)
    s.succeeded(b)  # the right password: nothing of it stays
    assert s.failures("192.0.2.1", "alice") == (0, 0)
    assert s.failures("192.0.2.1", "alice@example.org") == (0, 0)
    # two failures for "alice": a third attempt under another spelling stops at also_login
    for _ in range(2):
        s.record_failure("192.0.2.9", "alice")
    c = s.begin_attempt("192.0.2.1", "ALICE-typed", 10, 2)
    assert c is not None and s.also_login(c, "alice", 2) is None
    assert s.failures("192.0.2.9", "alice") == (2, 2)  # nothing more counted for alice
    # the per-address limit refuses before anything is counted (c's attempt is the one)
    assert s.begin_attempt("192.0.2.1", "bob", 1, 10) is None
    assert s.failures("192.0.2.1", "bob") == (1, 0)
    s.close()


def test_a_session_keeps_the_identity_of_the_entry_that_logged_in(tmp_path: Path) -> None:
    from policyd.web.sessions import _MIGRATIONS, identity_text

    ident = identity_text(frozenset({"pwdChangedTime=20261207193000Z", "entryUUID=1234"}))
    assert ident == "entryUUID=1234\npwdChangedTime=20261207193000Z"
    assert identity_text(frozenset()) is None
    # a file from schema 1 (sessions without identity) is migrated; its sessions have none,
    # so `policyd web` ends them at their next request
    db = sqlite3.connect(tmp_path / "s.sqlite")
    db.execute("CREATE TABLE web_schema (version INTEGER NOT NULL)")
    db.execute("INSERT INTO web_schema (version) VALUES (1)")
    for stmt in _MIGRATIONS[1]:
        db.execute(stmt)
    db.execute(
        "INSERT INTO web_sessions (id_hash, login, csrf, created, last_seen) "
        "VALUES ('h', 'bob', 'c', 999999, 999999)"
    )
    db.commit()
    db.close()
    clock = Clock()
    s = store(tmp_path, clock)
    sid, _ = s.create("alice", ident)
    got = s.get(sid)
    assert got is not None and got.identity == ident
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("SELECT identity FROM web_sessions WHERE login = 'bob'").fetchall() == [
            (None,)
        ]
        assert db.execute("SELECT version FROM web_schema").fetchone() == (SCHEMA_VERSION,)
