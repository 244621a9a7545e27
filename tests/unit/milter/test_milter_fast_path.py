"""The milter decides in libmilter's thread when every fact is known at once (issue 29): the
in-memory file directory and fresh cache hits skip the hop to the lookup loop's thread; a
cache miss still takes it. The decisions are the same either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

Milter = pytest.importorskip(
    "Milter", reason="pymilter is not installed (pip install 'policyd[milter]')"
)

from policyd.config import Config  # noqa: E402
from policyd.milter.decide import decide_headers, decide_headers_now  # noqa: E402
from policyd.milter.headers import (  # noqa: E402
    MEMO_MAX_CHARS,
    _author_memo,
    author_check,
    author_mailboxes,
)
from policyd.milter.libmilter import install  # noqa: E402
from policyd.milter.service import MilterService  # noqa: E402
from policyd.runtime import Runtime, build_runtime  # noqa: E402
from tests.unit.milter.test_milter import (  # noqa: E402
    _isolate_pymilter,  # noqa: F401 - the autouse fixture
    assert_accepted,
    blocking_runtime,
    feed,
    make_config,
    message,
)

pytestmark = pytest.mark.milter


@pytest.fixture
def make_service() -> Iterator[Callable[..., MilterService]]:
    """Started, installed services (as test_milter's `services`), closed after the test."""
    made: list[MilterService] = []

    def make(config: Config, runtime: Runtime | None = None) -> MilterService:
        svc = MilterService.from_config(config, runtime)
        svc.start()
        install(svc)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


CASES = [
    ("alice", "From: alice@example.org"),
    ("alice", "From: bob@example.org"),
    ("alice", 'From: "ceo@example.org" <alice@example.org>'),
    ("alice", "From: alice@example.org\nSender: bob@example.org"),
    ("nobody", "From: alice@example.org"),
    ("", "From: alice@example.org"),
    ("", "From: friend@external.test"),
]


def _submits(svc: MilterService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the decisions handed to the lookup loop."""
    calls: list[str] = []
    real = svc._submit

    def counted(coro: Any) -> Any:
        calls.append(getattr(coro, "__name__", "?"))
        return real(coro)

    monkeypatch.setattr(svc, "_submit", counted)
    return calls


@pytest.mark.parametrize("protect", [False, True])
def test_the_same_decision_without_the_hop(tmp_path: Path, protect: bool) -> None:
    config = make_config(tmp_path, protect_local_senders=protect)
    rt = build_runtime(config)
    profile = config.milter_profile()
    try:
        for login, headers in CASES:
            hdrs = [tuple(h.split(": ", 1)) for h in headers.split("\n")]
            author = author_mailboxes([(k.lower(), v) for k, v in hdrs], rt.rules)
            now = decide_headers_now(rt, profile, login, author, client="192.0.2.7", sender="s@x")
            slow = asyncio.run(
                decide_headers(rt, profile, login, author, client="192.0.2.7", sender="s@x")
            )
            assert now == slow, (login, headers)
    finally:
        rt.close()


def test_file_directory_decides_without_the_lookup_loop(
    tmp_path: Path, make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc: MilterService = make_service(make_config(tmp_path))
    calls = _submits(svc, monkeypatch)
    assert_accepted(*feed(message("From: alice@example.org")))
    rc, ctx = feed(message("From: bob@example.org"))
    assert rc == Milter.REJECT
    assert calls == []


def test_cache_hit_decides_in_place_and_a_miss_takes_the_loop(
    tmp_path: Path, make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path)
    runtime, backend = blocking_runtime(config)
    svc: MilterService = make_service(config, runtime)
    calls = _submits(svc, monkeypatch)
    assert_accepted(*feed(message("From: alice@example.org")))  # miss: the loop, the backend
    assert len(calls) == 1 and backend.calls == 1
    assert_accepted(*feed(message("From: alice@example.org")))  # hit: here
    rc, ctx = feed(message("From: bob@example.org"))  # alice's addresses cached: here too
    assert rc == Milter.REJECT
    assert len(calls) == 1 and backend.calls == 1
    # a directory that went down is still not asked for a fresh hit; an unknown login is
    backend.down = True
    rc, ctx = feed(message("From: carol@example.org"), login="carol")
    assert rc == Milter.TEMPFAIL
    assert len(calls) == 2


# --- the author check, remembered (issue 29) --------------------------------------------------

HEADER_SETS = [
    [("from", "alice@example.org")],
    [("from", '"ceo@example.org" <alice@example.org>')],
    [("from", "alice@example.org"), ("sender", "bob@example.org")],
    [("from", "alice@example.org"), ("from", "bob@example.org")],
    [("from", "alice@example.org)<ceo@example.org>")],
    [("from", "=?utf-8?q?ceo=40example=2Eorg?= <alice@example.org>")],
    [("sender", "bob@example.org")],
]


@pytest.mark.parametrize("headers", HEADER_SETS)
def test_author_check_is_author_mailboxes(headers: list[tuple[str, str]]) -> None:
    first = author_check(headers)
    assert first == author_mailboxes(headers)
    assert author_check(list(headers)) == first  # the remembered one


def test_author_check_remembers_small_headers_only() -> None:
    _author_memo.cache_clear()
    small = [("from", "alice@example.org")]
    author_check(small)
    author_check(small)
    assert _author_memo.cache_info().hits == 1
    big = [("from", "alice@example.org (" + "x" * MEMO_MAX_CHARS + ")")]
    assert author_check(big) == author_mailboxes(big)
    assert _author_memo.cache_info().currsize == 1  # not kept


def test_the_milter_parses_a_repeated_from_once(tmp_path: Path, make_service: Any) -> None:
    make_service(make_config(tmp_path))
    _author_memo.cache_clear()
    assert_accepted(*feed(message("From: alice@example.org")))
    assert_accepted(*feed(message("From: alice@example.org")))
    rc, ctx = feed(message("From: alice@example.org", "Sender: bob@example.org"))
    assert rc == Milter.REJECT
    info = _author_memo.cache_info()
    assert (info.hits, info.misses) == (1, 2)
