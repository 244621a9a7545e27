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
