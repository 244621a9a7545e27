"""Sender verification, the API: refusals, code and link rules, rate limits, the mail, audit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from policyd.verification.store import Store
from policyd.verification.views import Actor, Refused
from tests.verification_helpers import Clock, code_of, make_api, token_of

ALICE = Actor("alice", "192.0.2.10")
X = "x@elsewhere.test"


def refused(fn, *args, **kwargs) -> Refused:
    with pytest.raises(Refused) as e:
        fn(*args, **kwargs)
    return e.value


def states_of(api) -> list[tuple[str, str, str]]:
    return [(e.login, e.address, e.state) for e in api.entries()]


# -- request: refusals change nothing and send nothing ---------------------------------------


@pytest.mark.parametrize(
    ("login", "address", "code"),
    [
        ("alice", "x@example.org", "local_domain"),
        ("alice", "x@lists.example.org", "local_domain"),
        ("carol", "x@carol.example", "local_domain"),
        ("alice", "alice@example.org", "local_domain"),
        ("alice", "x@elsewhere.test\r\nBcc: v@example.net", "control_characters"),
        ("alice", "x\x00@elsewhere.test", "control_characters"),
        ("alice", "a" * 300 + "@elsewhere.test", "too_long"),
        ("alice", "x@pаypal.com", "confusable"),
        ("alice", '"quoted"@elsewhere.test', "bad_syntax"),
        ("nobody", X, "unknown_login"),
    ],
)
def test_a_refused_request_sends_no_mail_and_stores_nothing(
    tmp_path: Path, login: str, address: str, code: str
) -> None:
    api, outbox, _ = make_api(tmp_path)
    e = refused(api.request, login, address, actor=ALICE)
    assert e.code == code
    assert outbox.sent == [] and api.entries() == [] and api.audit() == []


def test_an_address_the_login_already_owns_is_refused(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path, directory="alice: alice@example.org, @friends.test\n")
    assert refused(api.request, "alice", "x@friends.test", actor=ALICE).code == "already_owned"
    api.request("alice", X, actor=ALICE)
    api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
    assert refused(api.request, "alice", X.upper(), actor=ALICE).code == "already_owned"
    assert len(outbox.sent) == 1


def test_the_answer_does_not_tell_whether_another_login_has_or_requested_the_address(
    tmp_path: Path,
) -> None:
    api, outbox, _ = make_api(
        tmp_path,
        directory="alice: alice@example.org\nbob: bob@example.org, x@elsewhere.test\n"
        "carol: @corp.test\n",
    )
    # The directory's addresses are refused (the directory wins), with one sentence that
    # names no login, whether a login holds the address itself or its whole domain.
    exact = refused(api.request, "alice", X, actor=ALICE)
    domain = refused(api.request, "alice", "y@corp.test", actor=ALICE)
    assert exact.code == domain.code == "directory_owned"
    assert exact.message == domain.message and "bob" not in exact.message
    api.request("alice", "y@elsewhere.test", actor=ALICE)
    other = api.request("bob", "y@elsewhere.test", actor=Actor("bob"))  # alice asked first
    assert other.state == "pending" and len(outbox.sent) == 2


def test_a_suppressed_address_is_refused_until_an_admin_unblocks_it(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.block(X, actor=Actor("cli"))
    assert refused(api.request, "alice", X, actor=ALICE).code == "suppressed"
    api.unblock(X, actor=Actor("cli"))
    assert api.request("alice", X, actor=ALICE).state == "pending"


# -- codes --------------------------------------------------------------------------------


def test_the_right_code_verifies_once_and_only_verified_counts(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    view = api.request("alice", X, actor=ALICE)
    assert (view.state, view.address, view.login) == ("pending", X, "alice")
    code = code_of(outbox.last)
    entry = api.confirm_code("alice", "X@ELSEWHERE.test", code, actor=ALICE)
    assert (entry.state, entry.method) == ("verified", "code")
    again = refused(api.confirm_code, "alice", X, code, actor=ALICE)
    assert again.code == "not_pending"  # single use
    assert states_of(api) == [("alice", X, "verified")]


def test_another_logins_code_does_not_confirm_for_it(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    assert refused(api.confirm_code, "bob", X, code, actor=Actor("bob")).code == "not_pending"
    assert states_of(api) == [("alice", X, "pending")]


def test_a_code_expires_after_30_minutes_but_the_request_waits_for_a_resend(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    clock.advance(30 * 60 + 1)
    assert refused(api.confirm_code, "alice", X, code, actor=ALICE).code == "expired"
    assert states_of(api) == [("alice", X, "pending")]
    api.resend("alice", X, actor=ALICE)
    new = code_of(outbox.last)
    assert api.confirm_code("alice", X, new, actor=ALICE).state == "verified"


def test_five_wrong_codes_cancel_the_request(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    for left in (4, 3, 2, 1):
        e = refused(api.confirm_code, "alice", X, wrong, actor=ALICE)
        assert (e.code, e.message) == ("bad_code", f"Wrong code; {left} tries left.")
    assert refused(api.confirm_code, "alice", X, wrong, actor=ALICE).code == "too_many_tries"
    assert states_of(api) == [("alice", X, "cancelled")]
    assert refused(api.confirm_code, "alice", X, code, actor=ALICE).code == "not_pending"
    assert [a.event for a in api.audit()][-1] == "too_many_tries"


def test_a_resend_voids_the_old_code_and_link(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    old_code, old_token = code_of(outbox.last), token_of(outbox.last)
    api.resend("alice", X, actor=ALICE)
    new_code, new_token = code_of(outbox.last), token_of(outbox.last)
    assert new_token != old_token
    if old_code != new_code:
        assert refused(api.confirm_code, "alice", X, old_code, actor=ALICE).code == "bad_code"
    assert api.landing(old_token) is None
    assert refused(api.confirm_token, old_token, actor=ALICE).code == "unknown_token"
    assert api.confirm_token(new_token, actor=ALICE).state == "verified"


# -- links ----------------------------------------------------------------------------------


def test_the_landing_page_changes_nothing_and_the_post_confirms_once(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    token = token_of(outbox.last)
    audit_before = api.audit()
    for _ in range(3):  # link scanners fetch it again and again
        view = api.landing(token)
        assert view is not None
        assert (view.address, view.primary_address, view.site_name) == (
            X,
            "alice@example.org",
            "Example Mail",
        )
    assert api.audit() == audit_before and states_of(api) == [("alice", X, "pending")]
    entry = api.confirm_token(token, actor=Actor("anonymous", "198.51.100.7"))
    assert (entry.state, entry.method) == ("verified", "link")
    assert api.landing(token) is None
    assert refused(api.confirm_token, token, actor=ALICE).code == "not_pending"
    last = api.audit()[-1]
    assert (last.event, last.ip, last.old_state, last.new_state) == (
        "confirm",
        "198.51.100.7",
        "pending",
        "verified",
    )


def test_a_link_expires_after_72_hours_and_so_does_the_request(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    token = token_of(outbox.last)
    clock.advance(72 * 3600 - 5)
    assert api.landing(token) is not None
    clock.advance(10)
    assert api.landing(token) is None
    assert refused(api.confirm_token, token, actor=ALICE).code == "expired"
    assert states_of(api) == [("alice", X, "expired")]
    # a new request is possible afterwards
    assert api.request("alice", X, actor=ALICE).state == "pending"


@pytest.mark.parametrize("token", ["", "nonsense", "A" * 43, "A" * 42 + "\n", "A" * 10_000])
def test_unknown_tokens_are_refused_and_change_nothing(tmp_path: Path, token: str) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    assert api.landing(token) is None
    assert refused(api.confirm_token, token, actor=ALICE).code == "unknown_token"
    assert refused(api.refuse_token, token, actor=ALICE).code == "unknown_token"
    assert states_of(api) == [("alice", X, "pending")]


def test_this_was_not_me_refuses_and_suppresses_the_address(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    api.refuse_token(token_of(outbox.last), actor=Actor("anonymous", "198.51.100.7"))
    assert states_of(api) == [("alice", X, "refused")]
    assert [a for a, *_ in api.blocked()] == [X]
    assert refused(api.request, "alice", X, actor=ALICE).code == "suppressed"
    assert refused(api.request, "bob", X, actor=Actor("bob")).code == "suppressed"


def test_cancel_and_revoke(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    api.cancel("alice", X, actor=ALICE)
    assert refused(api.cancel, "alice", X, actor=ALICE).code == "not_pending"
    api.request("alice", X, actor=ALICE)
    api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
    assert refused(api.revoke, "bob", X, actor=ALICE).code == "not_verified"
    api.revoke("alice", X, actor=ALICE)
    assert refused(api.revoke, "alice", X, actor=ALICE).code == "not_verified"
    assert [s for *_, s in states_of(api)] == ["cancelled", "revoked"]


def test_an_admin_may_add_without_a_mail_and_it_is_audited_as_such(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path)
    e = api.add_unverified("alice", X, actor=Actor("cli"))
    assert (e.state, e.method) == ("verified", "admin") and outbox.sent == []
    last = api.audit()[-1]
    assert (last.who, last.event, last.new_state) == ("cli", "add_unverified", "verified")
    assert refused(api.add_unverified, "alice", "x@example.org", actor=Actor("cli")).code == (
        "local_domain"
    )


def test_purge_deletes_old_finished_requests_and_keeps_the_audit(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    api.cancel("alice", X, actor=ALICE)
    api.request("alice", "y@elsewhere.test", actor=ALICE)
    api.confirm_code("alice", "y@elsewhere.test", code_of(outbox.last), actor=ALICE)
    audit = len(api.audit())
    clock.advance(40 * 86400)
    assert api.purge(30, actor=Actor("cli")) == 1
    assert states_of(api) == [("alice", "y@elsewhere.test", "verified")]
    assert len(api.audit()) == audit + 1


# -- rate limits ------------------------------------------------------------------------------


def test_pending_requests_per_login_are_limited(tmp_path: Path) -> None:
    api, _, _ = make_api(tmp_path, limits={"pending_per_login": 2})
    api.request("alice", "a@elsewhere.test", actor=ALICE)
    api.request("alice", "b@elsewhere.test", actor=ALICE)
    assert refused(api.request, "alice", "c@elsewhere.test", actor=ALICE).code == "rate_limited"
    api.cancel("alice", "a@elsewhere.test", actor=ALICE)
    api.request("alice", "c@elsewhere.test", actor=ALICE)


def test_requests_a_day_count_across_cancel_and_restart(tmp_path: Path) -> None:
    api, _, clock = make_api(tmp_path, limits={"requests_per_login_per_day": 3})
    for _ in range(3):
        api.request("alice", X, actor=ALICE)
        api.cancel("alice", X, actor=ALICE)  # add/remove cycles do not reset the count
    api.store.close()
    api2, _, _ = make_api(tmp_path, clock=clock, limits={"requests_per_login_per_day": 3})
    assert refused(api2.request, "alice", X, actor=ALICE).code == "rate_limited"
    clock.advance(86400 + 1)
    assert api2.request("alice", X, actor=ALICE).state == "pending"


def test_mails_to_one_address_are_limited_per_interval_and_day(tmp_path: Path) -> None:
    api, outbox, clock = make_api(
        tmp_path, limits={"mail_interval_per_address": 600.0, "mails_per_address_per_day": 3}
    )
    api.request("alice", X, actor=ALICE)
    e = refused(api.resend, "alice", X, actor=ALICE)
    assert e.code == "rate_limited"
    assert refused(api.request, "bob", X, actor=Actor("bob")).code == "rate_limited"
    clock.advance(601)
    api.resend("alice", X, actor=ALICE)
    clock.advance(601)
    api.request("bob", X, actor=Actor("bob"))
    clock.advance(601)
    assert refused(api.resend, "alice", X, actor=ALICE).code == "rate_limited"  # 3 a day
    assert len(outbox.sent) == 3


def test_the_global_hourly_cap(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path, limits={"mails_per_hour": 3})
    for i in range(3):
        api.request("alice", f"u{i}@elsewhere.test", actor=ALICE)
    assert refused(api.request, "bob", "v@elsewhere.test", actor=Actor("bob")).code == (
        "rate_limited"
    )
    clock.advance(3601)
    api.request("bob", "v@elsewhere.test", actor=Actor("bob"))


# -- the mail -------------------------------------------------------------------------------

HOSTILE = [
    '"Cheap pills http://spam.example/buy" <x@elsewhere.test>',
    "Visit spam.example now <x@elsewhere.test>",
    "x@elsewhere.test\r\nSubject: Cheap pills http://spam.example/buy",
    "x@elsewhere.test, victim@example.net",
    "=?utf-8?q?Cheap_pills?= <x@elsewhere.test>",
]


def test_the_mail_carries_no_user_typed_text(tmp_path: Path) -> None:
    directory = "alice: alice@example.org\n"
    api, outbox, _ = make_api(tmp_path, directory=directory)
    for typed in HOSTILE:
        with pytest.raises(Refused):
            api.request("alice", typed, actor=ALICE)
    assert outbox.sent == []
    # The accepted address is only ever the bare normalised one, in To: and nowhere else.
    typed = "Cheap.Pills+http-spam.example@Elsewhere.test"
    api.request("alice", typed, actor=ALICE)
    msg, envelope_from, to = outbox.sent[-1]
    raw = msg.as_bytes()
    normal = "cheap.pills+http-spam.example@elsewhere.test"
    assert to == normal and msg["To"] == normal
    assert raw.count(normal.encode()) == 1
    for text in ("Cheap", "pills", "spam.example", "http-spam"):
        assert text.encode() not in raw.replace(normal.encode(), b"")
    assert b"http://spam" not in raw and b"victim" not in raw
    body = msg.get_content()
    assert "alice@example.org" in body and "Example Mail" in body
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].endswith("@example.org>")
    assert msg["From"] == "Example Mail <postmaster@example.org>"
    assert envelope_from == "postmaster@example.org"


def test_the_bounce_address_is_the_envelope_sender(tmp_path: Path) -> None:
    from policyd.config.verification import VerificationMailConfig

    api, outbox, _ = make_api(
        tmp_path, mail=VerificationMailConfig(bounce_address="bounces@example.org")
    )
    api.request("alice", X, actor=ALICE)
    assert outbox.sent[-1][1] == "bounces@example.org"


# -- no secret anywhere ----------------------------------------------------------------------


def test_no_code_or_token_reaches_a_log_the_audit_or_the_database_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api, outbox, _ = make_api(tmp_path)
    secrets = []
    api.request("alice", X, actor=ALICE)
    secrets += [code_of(outbox.last), token_of(outbox.last)]
    api.resend("alice", X, actor=ALICE)
    secrets += [code_of(outbox.last), token_of(outbox.last)]
    wrong = f"{(int(secrets[2]) + 1) % 10**8:08d}"
    with pytest.raises(Refused):
        api.confirm_code("alice", X, wrong, actor=ALICE)
    api.landing(secrets[3])
    api.confirm_token(secrets[3], actor=ALICE)
    api.request("alice", "y@elsewhere.test", actor=ALICE)
    secrets += [code_of(outbox.last), token_of(outbox.last)]
    api.confirm_code("alice", "y@elsewhere.test", secrets[4], actor=ALICE)
    api.revoke("alice", X, actor=ALICE)
    assert caplog.records  # transitions are logged ...
    logged = "\n".join(r.getMessage() for r in caplog.records)
    audit = repr(api.audit()) + repr(api.entries())
    api.store.close()
    files = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("senders"))
    for s in secrets + [wrong]:
        assert s not in logged and s not in audit  # ... but never a secret
        assert s.encode() not in files


def test_times_come_from_the_clock(tmp_path: Path) -> None:
    clock = Clock(1_900_000_000.0)
    api, _, _ = make_api(tmp_path, clock=clock)
    v = api.request("alice", X, actor=ALICE)
    assert v.created == clock.t
    assert v.code_expires == clock.t + 1800 and v.link_expires == clock.t + 259200


def test_store_reopened_keeps_requests_audit_and_suppressions(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    api.block("z@elsewhere.test", actor=Actor("cli"))
    before = (api.entries(), api.audit(), api.blocked())
    api.store.close()
    store = Store(tmp_path / "senders.sqlite")
    api2, _, _ = make_api(tmp_path, clock=clock, store=store)
    assert (api2.entries(), api2.audit(), api2.blocked()) == before
    assert api2.confirm_code("alice", X, code, actor=ALICE).state == "verified"


def test_only_committed_transitions_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyd.verification")
    api, outbox, _ = make_api(tmp_path, limits={"mails_per_hour": 1})
    api.request("alice", X, actor=ALICE)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"sender verification: request {X} for alice: - -> pending by alice from 192.0.2.10"
    ]
    caplog.clear()
    with pytest.raises(Refused):
        api.request("bob", "y@elsewhere.test", actor=Actor("bob"))  # rolled back: rate limit
    assert [r.getMessage() for r in caplog.records] == []


# -- who owns an address: re-checked at confirm time (issue 23, section 1) --------------------


def test_confirm_refuses_an_address_the_directory_took_meanwhile(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    # the admin gives carol the whole domain before alice confirms
    api, _, _ = make_api(
        tmp_path,
        clock=clock,
        mailer=outbox,
        directory="alice: alice@example.org\nbob: bob@example.org\n"
        "carol: @carol.example, @elsewhere.test\n",
    )
    assert refused(api.confirm_code, "alice", X, code, actor=ALICE).code == "directory_owned"
    assert states_of(api) == [("alice", X, "pending")]


def test_confirm_refuses_when_local_domains_now_hold_the_address(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    # (a parent domain counts)
    api, _, _ = make_api(
        tmp_path, clock=clock, mailer=outbox, local_domains=("example.org", "test")
    )
    refusal = refused(api.confirm_token, token_of(outbox.last), actor=Actor("link"))
    assert refusal.code == "local_domain"
    assert states_of(api) == [("alice", X, "pending")]


def test_confirm_refuses_when_the_login_is_another_entry_now(tmp_path: Path) -> None:
    api, outbox, clock = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    # alice's line replaced: another account under the same login
    api, _, _ = make_api(
        tmp_path,
        clock=clock,
        mailer=outbox,
        directory="alice: alice@example.org, a.newcomer@example.org\nbob: bob@example.org\n",
    )
    assert refused(api.confirm_code, "alice", X, code, actor=ALICE).code == "unknown_login"
    assert states_of(api) == [("alice", X, "pending")]
    # she asks again herself: the request is hers now, and confirms
    api.request("alice", X, actor=ALICE)
    assert api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE).state == "verified"


def test_add_without_verification_refuses_an_unknown_login(tmp_path: Path) -> None:
    api, _, _ = make_api(tmp_path)
    assert refused(api.add_unverified, "mallory", X, actor=Actor("cli")).code == "unknown_login"
    assert states_of(api) == []


def test_a_verified_row_from_before_identities_counts_while_the_login_is_known(
    tmp_path: Path,
) -> None:
    """Schema 1 -> 2: rows verified before have no identity; they count while the directory
    knows the login (they cannot be tied to an entry after the fact)."""
    import sqlite3

    from policyd.verification.source import VerifiedSource
    from policyd.verification.store import MIGRATIONS

    db = tmp_path / "senders.sqlite"
    c = sqlite3.connect(db)
    c.executescript(MIGRATIONS[0])
    c.execute(
        "INSERT INTO requests (login, address, state, method, created, updated, verified_at) "
        "VALUES ('alice', ?, 'verified', 'code', 1, 1, 1)",
        (X,),
    )
    c.execute("PRAGMA user_version = 1")
    c.commit()
    c.close()
    api, _, _ = make_api(tmp_path)  # migrates
    (entry,) = api.entries()
    assert (entry.state, entry.why) == ("verified", None)
    source = VerifiedSource(db)
    source.refresh()
    assert source.addresses_of("alice") == {X} and source.identity("alice", X) is None
    source.close()
    api, _, _ = make_api(tmp_path, directory="bob: bob@example.org\n")  # alice is gone
    (entry,) = api.entries()
    assert entry.state == "superseded" and "entry" in (entry.why or "")
