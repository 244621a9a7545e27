"""The header From: milter, driven through pymilter's own Milter.testctx.TestCtx (no MTA).

TestCtx runs the real callback sequence (negotiate, connect, helo, envfrom, envrcpt, data,
headers, eoh, body, eom) against the real HeaderFromMilter, MilterService, engine, cache and
directory. Directory failures come from small test *backends* behind the real LookupRunner and
CachedLookups. Milter.test is never imported (it sets Milter.NOREPLY = CONTINUE globally).
"""

from __future__ import annotations

import functools
import io
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

Milter = pytest.importorskip(
    "Milter", reason="pymilter is not installed (pip install 'policyd[milter]')"
)
from Milter.testctx import TestCtx as MilterTestCtx  # noqa: E402

from policyd import cli  # noqa: E402
from policyd.config import Config, config_from_dict  # noqa: E402
from policyd.directory.base import DirectoryUnavailable  # noqa: E402
from policyd.directory.cache import CachedLookups, LookupRunner  # noqa: E402
from policyd.directory.lookups import DirectLookups  # noqa: E402
from policyd.directory.static import StaticDirectory  # noqa: E402
from policyd.milter.headers import AuthorCheck  # noqa: E402
from policyd.milter.libmilter import (  # noqa: E402
    HeaderFromMilter,
    decision_line,
    install,
    split_reply,
)
from policyd.milter.service import MilterService  # noqa: E402
from policyd.networks import Networks  # noqa: E402
from policyd.runtime import Runtime, build_runtime  # noqa: E402

pytestmark = pytest.mark.milter

DIRECTORY = """\
alice:      alice@example.org, alice.smith@example.org
bob:        bob@example.org
carol:      @carol.example
dave:       dave@bücher.example
alice, bob: sales@example.org
"""

QUEUE_ID = "4BF1C20E93"
NR_ALL = (
    Milter.P_NR_CONN
    | Milter.P_NR_HELO
    | Milter.P_NR_MAIL
    | Milter.P_NR_RCPT
    | Milter.P_NR_DATA
    | Milter.P_NR_UNKN
    | Milter.P_NR_EOH
    | Milter.P_NR_BODY
    | Milter.P_NR_HDR
)


def make_config(tmp_path: Path, **profile: Any) -> Config:
    directory = tmp_path / "senders.txt"
    directory.write_text(DIRECTORY, encoding="utf-8")
    addresses = profile.pop("addresses", {})
    return config_from_dict(
        {
            "directory": {"backend": "file", "file": str(directory), "lookup_deadline": 0.5},
            "addresses": addresses,
            "milter": {"listen": "unix:/tmp/unused.sock", "profile": "submission"},
            "profiles": {"submission": {"role": "submission", **profile}},
        },
        source="test.toml",
        base_dir=tmp_path,
    )


class BlockingBackend:
    """A blocking test backend (like LDAP) over the test data: can be down, hang or break."""

    blocking = True

    def __init__(self, rules: Any) -> None:
        self.static = StaticDirectory.from_lines(DIRECTORY.splitlines(), rules)
        self.down = False
        self.hang = 0.0
        self.broken = False
        self.calls = 0
        self.threads: set[str] = set()

    def _enter(self) -> None:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.hang:
            time.sleep(self.hang)
        if self.broken:
            raise RuntimeError("backend bug")
        if self.down:
            raise DirectoryUnavailable("test: connection refused")

    def addresses_of(self, login: str) -> frozenset[str]:
        self._enter()
        return self.static.addresses_of(login)

    def owners_of(self, address: str) -> frozenset[str]:
        self._enter()
        return self.static.owners_of(address)

    def identity_of(self, login: str) -> frozenset[str]:
        self._enter()
        return self.static.identity_of(login)

    def close(self) -> None:
        pass


def blocking_runtime(config: Config) -> tuple[Runtime, BlockingBackend]:
    """What build_runtime makes for LDAP: the real LookupRunner and CachedLookups."""
    rules = config.addresses.rules()
    backend = BlockingBackend(rules)
    runner = LookupRunner(backend, config.directory.threads, config.directory.lookup_deadline)
    lookups = CachedLookups(runner, config.cache)
    return Runtime(config, Networks.empty(), rules, backend, lookups), backend


@pytest.fixture(autouse=True)
def _isolate_pymilter(monkeypatch: pytest.MonkeyPatch) -> None:
    # install() sets the global Milter.factory; MilterTestCtx negotiates with a shared options list.
    monkeypatch.setattr(Milter, "factory", Milter.factory)
    monkeypatch.setattr(MilterTestCtx, "default_opts", list(MilterTestCtx.default_opts))


@pytest.fixture
def services() -> Iterator[Callable[[Config, Runtime | None], MilterService]]:
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


@pytest.fixture
def file_service(tmp_path: Path, services: Any) -> MilterService:
    svc: MilterService = services(make_config(tmp_path))
    return svc


def message(*headers: str, body: str = "Hello.\n") -> bytes:
    return ("\n".join(headers) + "\n\n" + body).encode("utf-8")


def new_ctx(*, login: str | None, noreply: bool = False) -> MilterTestCtx:
    if not noreply:
        # An MTA without NOREPLY support (MilterTestCtx's feeder stops at any non-CONTINUE answer).
        MilterTestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF & ~NR_ALL, 0, 0]
    ctx = MilterTestCtx()
    if login is not None:
        ctx._setsymval("{auth_authen}", login)
    ctx._setsymval("i", QUEUE_ID)
    assert (
        ctx._connect(host="client.example", helo="client.example", ip="192.0.2.7")
        == Milter.CONTINUE
    )
    return ctx


def feed(
    msg: bytes,
    *,
    login: str | None = "alice",
    sender: str = "alice@example.org",
    ctx: MilterTestCtx | None = None,
) -> tuple[int, MilterTestCtx]:
    ctx = ctx or new_ctx(login=login)
    rc = ctx._feedFile(io.BytesIO(msg), sender, "rcpt@example.net")
    return rc, ctx


def assert_accepted(rc: int, ctx: MilterTestCtx) -> None:
    assert rc in (Milter.ACCEPT, Milter.CONTINUE), (rc, ctx._reply)
    assert ctx._reply is None


def assert_rejected(rc: int, ctx: MilterTestCtx, reply: tuple[str, ...]) -> None:
    assert rc == Milter.REJECT
    assert ctx._reply == reply


# --- authenticated sessions -------------------------------------------------------------------


def test_aligned_from_is_accepted(file_service: MilterService) -> None:
    assert_accepted(*feed(message("From: Alice <alice@example.org>", "To: x@example.net")))


@pytest.mark.parametrize(
    "from_",
    [
        "alice.smith@example.org",
        "ALICE@Example.ORG",
        "alice+lists@example.org",  # extension stripped, as for the envelope sender
        "sales@example.org",  # shared address
        '"Smith, Alice" <alice.smith@example.org>',
        "alice@example.org (Alice at work)",
        "Team: alice@example.org, sales@example.org;",
    ],
)
def test_owned_variants_are_accepted(file_service: MilterService, from_: str) -> None:
    assert_accepted(*feed(message(f"From: {from_}")))


def test_foreign_from_is_rejected_550(file_service: MilterService) -> None:
    rc, ctx = feed(message("From: bob@example.org", "Subject: hi"))
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <bob@example.org> is not owned by user alice")
    )


def test_display_name_cannot_hide_the_address(file_service: MilterService) -> None:
    rc, ctx = feed(message('From: "alice@example.org" <ceo@example.org>'))
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <ceo@example.org> is not owned by user alice")
    )


def test_several_mailboxes_one_foreign_is_rejected(file_service: MilterService) -> None:
    rc, ctx = feed(message("From: Alice <alice@example.org>, Bob <bob@example.org>"))
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <bob@example.org> is not owned by user alice")
    )


def test_foreign_sender_header_is_rejected(file_service: MilterService) -> None:
    rc, ctx = feed(message("From: alice@example.org", "Sender: Bob <bob@example.org>"))
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header Sender <bob@example.org> is not owned by user alice")
    )


def test_own_sender_header_is_accepted(file_service: MilterService) -> None:
    assert_accepted(*feed(message("From: sales@example.org", "Sender: alice@example.org")))


def test_encoded_words(file_service: MilterService) -> None:
    ok = "From: =?utf-8?q?Alice_M=C3=BCller?= <alice@example.org>"
    assert_accepted(*feed(message(ok)))
    bad = "From: =?utf-8?b?QWxpY2UgTcO8bGxlcg==?= <bob@example.org>"
    rc, ctx = feed(message(bad))
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <bob@example.org> is not owned by user alice")
    )


def test_idn_domain_raw_utf8(file_service: MilterService) -> None:
    raw = "From: Däve <dave@BÜCHER.example>\n\nhi\n".encode()
    assert_accepted(*feed(raw, login="dave"))
    assert_accepted(*feed(message("From: dave@xn--bcher-kva.example"), login="dave"))


def test_folded_from_header(file_service: MilterService) -> None:
    assert_accepted(*feed(message("From: =?utf-8?q?Alice?=\n <alice@example.org>")))


@pytest.mark.parametrize(
    "headers",
    [
        ["Subject: no author"],
        ["From: garbage"],
        ["From: "],
        ["From: undisclosed-recipients:;"],
        ["From: Alice <alice@example.org> ceo@example.org"],
        ["From: =?utf-8?q?ceo=40example.org?="],
        ["From: alice@example.org", "From: alice@example.org"],
        ["From: alice@example.org", "Sender: garbage"],
    ],
)
def test_missing_or_invalid_from_is_rejected(
    file_service: MilterService, headers: list[str]
) -> None:
    rc, ctx = feed(message(*headers))
    assert_rejected(rc, ctx, ("550", "5.7.1", "Message has no valid From: header"))


def test_many_from_headers_are_invalid(file_service: MilterService) -> None:
    rc, ctx = feed(message(*["From: alice@example.org"] * 30))
    assert_rejected(rc, ctx, ("550", "5.7.1", "Message has no valid From: header"))


def test_unknown_login_owns_nothing(file_service: MilterService) -> None:
    rc, ctx = feed(message("From: mallory@example.org"), login="mallory")
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <mallory@example.org> is not owned by user mallory")
    )


def test_domain_owner(file_service: MilterService) -> None:
    assert_accepted(*feed(message("From: anything@carol.example"), login="carol"))


def test_login_is_canonicalised(tmp_path: Path, services: Any) -> None:
    services(make_config(tmp_path, addresses={"realms": ["example.org"]}))
    assert_accepted(*feed(message("From: alice@example.org"), login="Alice@Example.org"))
    rc, ctx = feed(message("From: bob@example.org"), login="Alice@Example.org")
    # the reply names the login as the user typed it
    assert_rejected(
        rc,
        ctx,
        ("550", "5.7.1", "Header From <bob@example.org> is not owned by user Alice@Example.org"),
    )


def test_percent_is_doubled_for_setreply(file_service: MilterService) -> None:
    rc, ctx = feed(message("From: 100%boss@example.org"))
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <100%%boss@example.org> is not owned by user alice")
    )


def test_custom_replies(tmp_path: Path, services: Any) -> None:
    services(
        make_config(
            tmp_path,
            replies={
                "header_from_not_owned": (
                    "554 5.7.0 {address} is not yours, {login} (from {client})"
                ),
                "header_from_invalid": "554 5.6.0 Bad From: header",
            },
        )
    )
    rc, ctx = feed(message("From: bob@example.org"))
    assert_rejected(
        rc, ctx, ("554", "5.7.0", "bob@example.org is not yours, alice (from 192.0.2.7)")
    )
    rc, ctx = feed(message("Subject: x"))
    assert_rejected(rc, ctx, ("554", "5.6.0", "Bad From: header"))


def test_state_is_reset_between_messages_on_one_connection(file_service: MilterService) -> None:
    ctx = new_ctx(login="alice")
    rc, _ = feed(message("From: bob@example.org"), ctx=ctx)
    assert rc == Milter.REJECT
    rc, _ = feed(message("From: alice@example.org"), ctx=ctx)
    assert_accepted(rc, ctx)
    rc, _ = feed(message("Subject: no from"), ctx=ctx)
    assert rc == Milter.REJECT


# --- directory trouble: always a tempfail, never an accept -------------------------------------


def test_directory_down_tempfails(tmp_path: Path, services: Any) -> None:
    config = make_config(tmp_path)
    runtime, backend = blocking_runtime(config)
    services(config, runtime)
    backend.down = True
    rc, ctx = feed(message("From: alice@example.org"))
    assert rc == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary lookup failure, please try again later")
    # the lookup ran on the runner's pool, not on the libmilter (here: test) thread
    assert backend.threads and all(t.startswith("policyd-lookup") for t in backend.threads)


def test_blocking_directory_accepts_and_caches(tmp_path: Path, services: Any) -> None:
    config = make_config(tmp_path)
    runtime, backend = blocking_runtime(config)
    services(config, runtime)
    assert_accepted(*feed(message("From: alice@example.org")))
    rc, ctx = feed(message("From: bob@example.org"))
    assert rc == Milter.REJECT
    assert backend.calls == 1  # the second message was answered from the cache
    # stale-if-error: the directory goes down, the cached answer still decides
    backend.down = True
    assert_accepted(*feed(message("From: alice@example.org")))


def test_directory_hang_tempfails_within_the_deadline(tmp_path: Path, services: Any) -> None:
    config = make_config(tmp_path)  # lookup_deadline 0.5 s
    runtime, backend = blocking_runtime(config)
    services(config, runtime)
    backend.hang = 3.0
    started = time.monotonic()
    rc, ctx = feed(message("From: alice@example.org"))
    assert rc == Milter.TEMPFAIL
    assert ctx._reply is not None and ctx._reply[:2] == ("451", "4.3.0")
    assert time.monotonic() - started < 2.0


def test_stuck_event_loop_counts_as_directory_down(file_service: MilterService) -> None:
    import asyncio

    file_service.deadline = 0.1
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable):
        file_service._submit(asyncio.sleep(10))
    assert 1.0 <= time.monotonic() - started < 3.0


def test_unexpected_error_tempfails(
    tmp_path: Path, services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    runtime, backend = blocking_runtime(config)
    services(config, runtime)
    backend.broken = True
    rc, ctx = feed(message("From: alice@example.org"))
    assert rc == Milter.TEMPFAIL
    assert ctx._reply is not None and ctx._reply[0] == "451"
    assert "header From: check failed" in caplog.text


def test_exception_before_eoh_tempfails(
    file_service: MilterService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: HeaderFromMilter, sym: str) -> str:
        raise RuntimeError("getsymval broke")

    monkeypatch.setattr(HeaderFromMilter, "getsymval", broken)
    rc, ctx = feed(message("From: alice@example.org"))
    assert rc == Milter.TEMPFAIL


def test_directory_down_in_warn_mode_still_tempfails(tmp_path: Path, services: Any) -> None:
    config = make_config(tmp_path, mode="warn")
    runtime, backend = blocking_runtime(config)
    services(config, runtime)
    backend.down = True
    rc, _ = feed(message("From: alice@example.org"))
    assert rc == Milter.TEMPFAIL


# --- unauthenticated sessions ------------------------------------------------------------------


@pytest.mark.parametrize("from_", ["alice@example.org", "someone@elsewhere.test", "garbage", None])
def test_unauthenticated_is_accepted_by_default(
    file_service: MilterService, from_: str | None
) -> None:
    headers = [f"From: {from_}"] if from_ else ["Subject: none"]
    assert_accepted(*feed(message(*headers), login=None, sender="x@elsewhere.test"))


def test_empty_auth_macro_is_unauthenticated(file_service: MilterService) -> None:
    assert_accepted(*feed(message("From: bob@example.org"), login=""))


class CallbackCounter:
    """Counts the callbacks MilterTestCtx makes into the milter (by wrapping them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in ("envfrom", "header", "eoh", "eom", "body"):
            orig = getattr(HeaderFromMilter, name)

            def wrapped(milter: Any, *args: Any, _orig: Any = orig, _name: str = name) -> Any:
                self.calls.append(_name)
                return _orig(milter, *args)

            functools.update_wrapper(wrapped, orig)
            monkeypatch.setattr(HeaderFromMilter, name, wrapped)


@pytest.mark.parametrize("login", [None, "", "  "])
def test_unauthenticated_is_accepted_at_mail_from(
    file_service: MilterService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    login: str | None,
) -> None:
    """Issue 29: without a login the message costs one callback that waits for an answer:
    ACCEPT at MAIL FROM, so the MTA sends no headers, no end-of-headers, no body for it."""
    counter = CallbackCounter(monkeypatch)
    caplog.set_level(logging.INFO, logger="policyd.decision")
    ctx = new_ctx(login=login)
    rc = ctx._feedFile(io.BytesIO(message("From: ceo@example.org")), "x@elsewhere.test", "r@e")
    assert rc == Milter.ACCEPT and ctx._reply is None
    assert counter.calls == ["envfrom"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "policyd.decision"]
    assert line.startswith(f"milter queue_id={QUEUE_ID} client=192.0.2.7 login=")
    assert "sender=x@elsewhere.test" in line and "action=DUNNO reason=not_authenticated" in line


def test_logged_in_session_still_sees_the_headers(
    file_service: MilterService, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CallbackCounter(monkeypatch)
    ctx = new_ctx(login="alice")
    rc = ctx._feedFile(io.BytesIO(message("From: bob@example.org")), "alice@example.org", "r@e")
    assert rc == Milter.REJECT
    assert counter.calls[0] == "envfrom" and "header" in counter.calls
    assert counter.calls[-1] == "eoh" and "body" not in counter.calls


def test_protect_local_senders_still_checks_unauthenticated_headers(
    tmp_path: Path, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    services(make_config(tmp_path, protect_local_senders=True))
    counter = CallbackCounter(monkeypatch)
    ctx = new_ctx(login=None)
    rc = ctx._feedFile(io.BytesIO(message("From: alice@example.org")), "x@else.test", "r@e")
    assert rc == Milter.REJECT
    assert "header" in counter.calls and counter.calls[-1] == "eoh"


def test_protect_local_senders(tmp_path: Path, services: Any) -> None:
    services(make_config(tmp_path, protect_local_senders=True))
    rc, ctx = feed(
        message("From: Alice <alice@example.org>"), login=None, sender="x@elsewhere.test"
    )
    assert_rejected(
        rc, ctx, ("553", "5.7.1", "Sender address <alice@example.org> requires SMTP authentication")
    )
    # one local mailbox among foreign ones is enough
    rc, ctx = feed(message("From: a@elsewhere.test, x@carol.example"), login=None)
    assert_rejected(
        rc, ctx, ("553", "5.7.1", "Sender address <x@carol.example> requires SMTP authentication")
    )
    assert_accepted(*feed(message("From: someone@elsewhere.test"), login=None))
    # invalid headers are not this rule's business when nobody logged in
    assert_accepted(*feed(message("From: garbage"), login=None))


def test_protect_local_senders_directory_down(tmp_path: Path, services: Any) -> None:
    config = make_config(tmp_path, protect_local_senders=True)
    runtime, backend = blocking_runtime(config)
    services(config, runtime)
    rc, ctx = feed(message("From: alice@example.org, bob@example.org"), login=None)
    assert rc == Milter.REJECT
    backend.down = True
    rc, ctx = feed(message("From: someone@elsewhere.test"), login=None)
    assert rc == Milter.TEMPFAIL


# --- warn mode ---------------------------------------------------------------------------------


def test_warn_mode_accepts_and_logs(
    tmp_path: Path, services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    services(make_config(tmp_path, mode="warn"))
    caplog.set_level(logging.INFO, logger="policyd.decision")
    assert_accepted(*feed(message("From: bob@example.org")))
    assert_accepted(*feed(message("Subject: no from")))
    lines = [r.getMessage() for r in caplog.records if r.name == "policyd.decision"]
    assert len(lines) == 2
    assert "action=DUNNO reason=header_from_not_owned" in lines[0]
    assert 'would="550 5.7.1 Header From <bob@example.org> is not owned by user alice"' in lines[0]
    assert "reason=header_from_invalid" in lines[1] and 'problem="no From: header"' in lines[1]


# --- the decision log -------------------------------------------------------------------------


def test_one_decision_line_per_message(
    file_service: MilterService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyd.decision")
    feed(message("From: Alice <alice@example.org>"))
    feed(message("From: bob@example.org"), sender="alice@example.org")
    feed(message("From: garbage"))
    lines = [r.getMessage() for r in caplog.records if r.name == "policyd.decision"]
    assert len(lines) == 3
    assert lines[0].startswith(
        f"milter queue_id={QUEUE_ID} client=192.0.2.7 login=alice sender=alice@example.org "
        "from=alice@example.org profile=submission action=ACCEPT reason=header_from_owned ms="
    )
    assert (
        'from=bob@example.org profile=submission action="550 5.7.1 Header From '
        '<bob@example.org> is not owned by user alice" reason=header_from_not_owned'
    ) in lines[1]
    assert "from=garbage" in lines[2] and "reason=header_from_invalid" in lines[2]
    assert "problem=\"From: 'garbage' is not a mailbox (local@domain)\"" in lines[2]


def test_decision_line_quotes_hostile_values() -> None:
    from policyd.core.decision import Decision, Reason, Verdict

    line = decision_line(
        queue_id="Q",
        client="192.0.2.1",
        login='a b"c',
        sender="",
        profile="p",
        author=AuthorCheck(None, "From: empty", "x\ny"),
        decision=Decision(Verdict.DUNNO, Reason.NOT_AUTHENTICATED),
        elapsed=0.001,
    )
    assert line == (
        'milter queue_id=Q client=192.0.2.1 login="a b\\"c" sender="" from="x\\x0ay" profile=p '
        'action=DUNNO reason=not_authenticated problem="From: empty" ms=1.00'
    )


def test_split_reply() -> None:
    assert split_reply("550 5.7.1 a 50% b") == ("550", "5.7.1", "a 50%% b")
    assert split_reply("451 4.3.0 x") == ("451", "4.3.0", "x")
    assert split_reply("550 5.7.1 <jörg@example.org>") == ("550", "5.7.1", "<j?rg@example.org>")


def test_non_ascii_local_part_in_the_reply(file_service: MilterService) -> None:
    rc, ctx = feed("From: Jörg <jörg@example.org>\n\nhi\n".encode())
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <j?rg@example.org> is not owned by user alice")
    )


# --- protocol negotiation with an MTA that supports NOREPLY (as Postfix does) ----------------


def test_negotiation_skips_body_and_replies_only_at_end_of_headers(
    file_service: MilterService,
) -> None:
    ctx = MilterTestCtx()
    ctx._setsymval("{auth_authen}", "alice")
    assert ctx._negotiate() == Milter.CONTINUE
    proto = ctx._protocol
    for skipped in (
        Milter.P_NOBODY,
        Milter.P_NORCPT,
        Milter.P_NOHELO,
        Milter.P_NODATA,
        Milter.P_NOUNKNOWN,
    ):
        assert proto & skipped
    for needed in (Milter.P_NOCONNECT, Milter.P_NOMAIL, Milter.P_NOHDRS, Milter.P_NOEOH):
        assert not proto & needed
    assert proto & Milter.P_NR_CONN and proto & Milter.P_NR_HDR
    # MAIL FROM waits for the answer: an unauthenticated message is accepted there (issue 29)
    assert not proto & Milter.P_NR_MAIL and not proto & Milter.P_NR_EOH
    priv = ctx.getpriv()
    assert Milter.connect_callback(ctx, "client.example", 2, ("192.0.2.7", 4567)) == Milter.NOREPLY
    assert priv.client == "192.0.2.7"  # libmilter's tuple form
    ctx._stage = Milter.M_ENVFROM
    assert priv.envfrom("<alice@example.org>") == Milter.CONTINUE
    ctx._stage = None
    assert priv.header_bytes("From", b"bob@example.org") == Milter.NOREPLY
    ctx._setsymval("i", QUEUE_ID)
    assert ctx._eoh() == Milter.REJECT
    assert ctx._reply == (
        "550",
        "5.7.1",
        "Header From <bob@example.org> is not owned by user alice",
    )


def test_ipv6_client(file_service: MilterService, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="policyd.decision")
    ctx = MilterTestCtx()
    ctx._setsymval("{auth_authen}", "alice")
    MilterTestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF & ~NR_ALL, 0, 0]
    assert ctx._connect(ip="2001:db8::7") == Milter.CONTINUE
    assert_accepted(*feed(message("From: alice@example.org"), ctx=ctx))
    assert "client=2001:db8::7" in caplog.text


# --- running without pymilter ------------------------------------------------------------------


def test_cli_without_pymilter_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "policyd.toml"
    (tmp_path / "senders.txt").write_text(DIRECTORY, encoding="utf-8")
    config.write_text('[directory]\nfile = "senders.txt"\n', encoding="utf-8")
    monkeypatch.setitem(sys.modules, "Milter", None)  # what `import Milter` sees without pymilter
    monkeypatch.delitem(sys.modules, "policyd.milter.libmilter", raising=False)
    assert cli.main(["milter", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "apt install policyd-milter" in err and "pip install '.[milter]'" in err
    assert "apt-get install libmilter-dev" in err


def test_policy_service_never_imports_pymilter() -> None:
    code = (
        "import sys\n"
        "sys.modules['Milter'] = None\n"
        "sys.modules['milter'] = None\n"
        "import policyd.cli, policyd.policy.app, policyd.policy.server, policyd.policy.service\n"
        "import policyd.core.engine, policyd.runtime, policyd.decision_log\n"
        "import policyd.milter, policyd.milter.headers, policyd.milter.decide\n"
        "assert 'policyd.milter.libmilter' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_build_runtime_path(tmp_path: Path, services: Any) -> None:
    """MilterService.from_config builds the runtime itself when given none."""
    config = make_config(tmp_path)
    svc = services(config)
    assert isinstance(svc.runtime.lookups, DirectLookups)  # in-memory: called directly
    assert svc.profile.name == "submission"
    other = build_runtime(config)
    other.close()


# --- the real process: libmilter, its socket and its signals ----------------------------------

MILTERTEST_SCRIPT = """
local ok, err = pcall(function()
  local conn = mt.connect("unix:%(socket)s", 20, 0.25)
  if conn == nil then error("cannot connect") end
  mt.conninfo(conn, "client.example", "192.0.2.7")
  mt.macro(conn, SMFIC_MAIL, "{auth_authen}", "alice")
  mt.mailfrom(conn, "<alice@example.org>")
  mt.header(conn, "From", "%(from_)s")
  mt.macro(conn, SMFIC_RCPT, "i", "%(queue_id)s")
  mt.eoh(conn)
  local r = mt.getreply(conn)
  if r == SMFIR_REPLYCODE then print("REPLYCODE")
  elseif r == SMFIR_ACCEPT then print("ACCEPT")
  elseif r == SMFIR_TEMPFAIL then print("TEMPFAIL")
  else print("OTHER " .. tostring(r)) end
  mt.disconnect(conn)
end)
if not ok then print("ERROR " .. tostring(err)) end
"""


def test_milter_process_with_libmilter(tmp_path: Path) -> None:
    """`policyd milter` for real: socket, a miltertest session, SIGTERM -> clean exit 0.

    SIGTERM must reach libmilter's sigwait() thread: a thread that does not block it (the
    lookup event loop) would let the default action kill the process mid-transaction (143).
    """
    import shutil
    import signal

    (tmp_path / "senders.txt").write_text(DIRECTORY, encoding="utf-8")
    sock = tmp_path / "milter.sock"
    config = tmp_path / "policyd.toml"
    config.write_text(
        f'[directory]\nfile = "senders.txt"\n[milter]\nlisten = "unix:{sock}"\n', encoding="utf-8"
    )
    log = tmp_path / "milter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "policyd", "milter", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=Path(__file__).resolve().parents[3],
        )
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no milter socket"
            time.sleep(0.05)
        if shutil.which("miltertest"):
            for from_, expected in (
                ("Bob <bob@example.org>", "REPLYCODE"),
                ("Alice <alice@example.org>", "ACCEPT"),
            ):
                script = tmp_path / "t.lua"
                script.write_text(
                    MILTERTEST_SCRIPT % {"socket": sock, "from_": from_, "queue_id": QUEUE_ID},
                    encoding="utf-8",
                )
                run = subprocess.run(
                    ["miltertest", "-s", str(script)], capture_output=True, text=True, timeout=30
                )
                assert run.stdout.strip() == expected, (run.stdout, run.stderr, log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = log.read_text()
    assert "milter stopped" in text
    assert not sock.exists()
    if shutil.which("miltertest"):
        assert f"milter queue_id={QUEUE_ID} client=192.0.2.7 login=alice" in text
        assert "reason=header_from_not_owned" in text and "reason=header_from_owned" in text


def test_milter_process_bad_socket(tmp_path: Path) -> None:
    (tmp_path / "senders.txt").write_text(DIRECTORY, encoding="utf-8")
    config = tmp_path / "policyd.toml"
    config.write_text(
        '[directory]\nfile = "senders.txt"\n[milter]\nlisten = "unix:/nonexistent/dir/m.sock"\n',
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, "-m", "policyd", "milter", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert out.returncode == 1
    assert "failed" in out.stderr


# --- the envelope's ownership rule applies to header addresses too ---------------------------


@pytest.mark.parametrize(
    ("login", "from_", "owner"),
    [
        ("alice", "alice+boss@example.org", "bob"),  # the exact key is bob's
        ("carol", "dave@carol.example", "dave"),  # a domain owner, a user's own address
    ],
)
def test_a_header_address_registered_to_another_login_is_rejected(
    tmp_path: Path, services: Any, login: str, from_: str, owner: str
) -> None:
    config = make_config(tmp_path)
    (tmp_path / "senders.txt").write_text(
        DIRECTORY + "bob: alice+boss@example.org\ndave: dave@carol.example\n", encoding="utf-8"
    )
    services(config)
    rc, ctx = feed(message(f"From: {from_}"), login=login, sender=f"{login}@example.org")
    assert_rejected(
        rc, ctx, ("550", "5.7.1", f"Header From <{from_}> is not owned by user {login}")
    )
    rc, ctx = feed(message(f"From: {from_}"), login=owner, sender=from_)
    assert_accepted(rc, ctx)


# --- an address a mail client would show, hidden in a display name or a comment --------------

DISPLAY = "550", "5.7.1"


@pytest.mark.parametrize(
    "from_",
    [
        '"ceo@example.org" <alice@example.org>',
        "=?utf-8?q?ceo=40example=2Eorg?= <alice@example.org>",
        "=?utf-8?B?PGNlb0BleGFtcGxlLm9yZz4=?= <alice@example.org>",
        "alice@example.org (ceo@example.org)",
        "<alice@example.org> (<ceo@example.org>)",
    ],
)
def test_an_unowned_address_in_a_display_name_or_comment_is_rejected(
    file_service: MilterService, from_: str
) -> None:
    rc, ctx = feed(message(f"From: {from_}"))
    assert_rejected(
        rc,
        ctx,
        (
            *DISPLAY,
            "Header From shows <ceo@example.org> in a display name or comment; "
            "it is not owned by user alice",
        ),
    )


def test_a_display_name_repeating_the_own_address_passes(file_service: MilterService) -> None:
    assert_accepted(*feed(message('From: "alice@example.org" <alice@example.org>')))
    assert_accepted(*feed(message('From: "sales@example.org" <alice@example.org>')))


def test_display_addresses_allowed_by_the_profile_check_only_the_mailboxes(
    tmp_path: Path, services: Any
) -> None:
    services(make_config(tmp_path, display_addresses="allow"))
    assert_accepted(*feed(message('From: "ceo@example.org" <alice@example.org>')))
    rc, ctx = feed(message('From: "alice@example.org" <ceo@example.org>'))
    assert_rejected(
        rc, ctx, ("550", "5.7.1", "Header From <ceo@example.org> is not owned by user alice")
    )


def test_an_unowned_resent_from_is_rejected_naming_the_header(
    file_service: MilterService,
) -> None:
    rc, ctx = feed(
        message("From: alice@example.org", "Resent-From: bob@example.org", "Subject: fwd")
    )
    assert_rejected(
        rc,
        ctx,
        ("550", "5.7.1", "Header Resent-From <bob@example.org> is not owned by user alice"),
    )
    assert_accepted(
        *feed(message("From: alice@example.org", "Resent-From: alice.smith@example.org"))
    )
