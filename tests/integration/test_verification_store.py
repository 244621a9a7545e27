"""Sender verification against real things: the SQLite file (restarts, racing confirmations,
a read-only or locked database), SMTP submission to a loopback aiosmtpd sink (down, then back:
resend), `policyd senders` as a process, and the verified source behind the lookups deciding
policy requests."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.config import load_config
from policyd.core.request import Request
from policyd.directory.base import DirectoryUnavailable
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from policyd.verification.lookups import SourcedLookups
from policyd.verification.mail import SmtpMailer
from policyd.verification.store import Store
from policyd.verification.views import Actor, Refused
from tests.servers.policyd_proc import run_cli as _policyd
from tests.servers.postfix import REPO, free_port
from tests.servers.smtp_sink import SmtpSink
from tests.verification_helpers import code_of, make_api, token_of

pytestmark = pytest.mark.timeout(60)

ALICE = Actor("alice", "192.0.2.10")
X = "x@elsewhere.test"


def config_text(db: Path, smtp_port: int, extra: str = "") -> str:
    return f"""
[directory]
file = "senders.txt"
[profiles.submission]
role = "submission"
[profiles.mx]
role = "mx"
protect_local_senders = true
[verification]
enabled = true
database = "{db}"
busy_timeout = 0.5
[verification.mail]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_timeout = 5.0
{extra}
"""


@pytest.fixture
def site() -> Iterator[Path]:
    """A directory others can read (the read-only test runs a process as nobody)."""
    d = Path(tempfile.mkdtemp(prefix="policyd-verify-"))
    d.chmod(0o755)
    (d / "senders.txt").write_text("alice: alice@example.org\nbob: bob@example.org\n")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def senders(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policyd", "senders", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


# -- the CLI as a process, over SMTP to the sink; restarts keep everything --------------------


def test_request_mails_the_sink_and_a_later_process_confirms_with_its_code(site: Path) -> None:
    with SmtpSink() as sink:
        cfg = site / "policyd.toml"
        cfg.write_text(config_text(site / "senders.sqlite", sink.port))
        r = senders(cfg, "request", "alice", "X@Elsewhere.test")
        assert r.returncode == 0, r.stderr
        assert "pending: x@elsewhere.test for alice" in r.stdout
        (msg,) = sink.wait_for(1)
        assert msg.rcpt_tos == (X,) and msg.mail_from == "postmaster@example.org"
        assert b"Auto-Submitted: auto-generated" in msg.content
        code = code_of(msg.content)
        assert code not in r.stdout + r.stderr
        r = senders(cfg, "--json", "list")
        assert '"state": "pending"' in r.stdout and code not in r.stdout
        wrong = f"{(int(code) + 1) % 10**8:08d}"
        r = senders(cfg, "confirm", "alice", X, wrong)
        assert r.returncode == 1 and "Wrong code; 4 tries left." in r.stderr
        r = senders(cfg, "confirm", "alice", X, code)
        assert r.returncode == 0 and "verified: x@elsewhere.test for alice" in r.stdout
        r = senders(cfg, "list", "--state", "verified")
        assert "verified" in r.stdout and "by code" in r.stdout
        r = senders(cfg, "audit", "--login", "alice")
        assert "request" in r.stdout and "confirm" in r.stdout and "cli" in r.stdout
        assert code not in r.stdout


# -- mail submission down: stays pending with the error, resend works ------------------------


def test_mail_submission_down_keeps_the_request_pending_with_the_error_then_resend_works(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens here yet
    api, _, _ = make_api(tmp_path, mailer=SmtpMailer("127.0.0.1", port, 2.0))
    with pytest.raises(Refused) as e:
        api.request("alice", X, actor=ALICE)
    assert e.value.code == "mail_failed" and f"127.0.0.1:{port}" in e.value.detail
    (entry,) = api.entries()
    assert entry.state == "pending" and entry.last_error and "refused" in entry.last_error
    assert [a.event for a in api.audit()] == ["request", "mail_failed"]
    with SmtpSink(port) as sink:
        view = api.resend("alice", X, actor=ALICE)
        assert view.last_error is None and view.mail_sent is not None
        (msg,) = sink.wait_for(1)
    assert api.confirm_code("alice", X, code_of(msg.content), actor=ALICE).state == "verified"


def test_the_mail_server_refusing_the_recipient_is_recorded(tmp_path: Path) -> None:
    class Refusing:
        async def handle_RCPT(self, server, session, envelope, address, options):
            return "550 5.1.1 no such user here"

    from aiosmtpd.controller import Controller

    port = free_port()
    c = Controller(Refusing(), hostname="127.0.0.1", port=port)
    c.start()
    try:
        api, _, _ = make_api(tmp_path, mailer=SmtpMailer("127.0.0.1", port, 2.0))
        with pytest.raises(Refused) as e:
            api.request("alice", X, actor=ALICE)
    finally:
        c.stop()
    assert e.value.code == "mail_failed" and "550" in e.value.detail
    assert api.entries()[0].state == "pending"


# -- two confirmations racing: exactly one wins -----------------------------------------------


def _race(db: str, kind: str, secret: str, start: multiprocessing.synchronize.Event, out) -> None:
    api, _, _ = make_api(Path(db).parent)
    start.wait()
    try:
        if kind == "code":
            api.confirm_code("alice", X, secret, actor=ALICE)
        else:
            api.confirm_token(secret, actor=ALICE)
        out.put("won")
    except Refused as e:
        out.put(e.code)


@pytest.mark.parametrize("kind", ["code", "token"])
def test_racing_confirmations_in_several_processes_have_exactly_one_winner(
    tmp_path: Path, kind: str
) -> None:
    api, outbox, _ = make_api(tmp_path)
    api.request("alice", X, actor=ALICE)
    secret = code_of(outbox.last) if kind == "code" else token_of(outbox.last)
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(str(tmp_path / "senders.sqlite"), kind, secret, start, out))
        for _ in range(6)
    ]
    for p in procs:
        p.start()
    start.set()
    results = sorted(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    assert results == ["not_pending"] * 5 + ["won"]
    assert [a.event for a in api.audit()].count("confirm") == 1


# -- a read-only or locked database: a clear error, nothing verified --------------------------


@contextlib.contextmanager
def read_only_view(d: Path) -> Iterator[Path]:
    """`d` seen through a read-only bind mount (root ignores file modes, not a ro mount);
    without the right to mount, as a non-root user: the files made read-only."""
    view = Path(tempfile.mkdtemp(prefix="policyd-ro-"))
    mounted = False
    try:
        if os.geteuid() == 0:
            for cmd in (["mount", "--bind", str(d), str(view)],
                        ["mount", "-o", "remount,bind,ro", str(view)]):  # fmt: skip
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                if r.returncode != 0:
                    pytest.skip(f"cannot make a read-only mount here: {r.stderr.strip()}")
                mounted = True
            yield view
        else:
            for p in d.glob("senders.sqlite*"):
                p.chmod(0o444)
            d.chmod(0o555)
            try:
                yield d
            finally:
                d.chmod(0o755)
    finally:
        if mounted:
            subprocess.run(["umount", str(view)], capture_output=True, timeout=10)
        view.rmdir()


def test_a_read_only_database_gives_a_clear_error_and_verifies_nothing(site: Path) -> None:
    api, outbox, _ = make_api(site)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    api.store.close()
    with read_only_view(site) as ro:
        cfg = site / "policyd.toml"
        cfg.write_text(config_text(ro / "senders.sqlite", free_port()))
        r = senders(cfg, "confirm", "alice", X, code)
        assert r.returncode == 1
        assert "read-only" in r.stderr, r.stderr
        assert code not in r.stderr
    api2, _, _ = make_api(site)
    assert [e.state for e in api2.entries()] == ["pending"]
    assert api2.confirm_code("alice", X, code, actor=ALICE).state == "verified"


def test_a_locked_database_gives_a_clear_error_and_verifies_nothing(tmp_path: Path) -> None:
    api, outbox, _ = make_api(tmp_path, busy_timeout=0.3)
    api.request("alice", X, actor=ALICE)
    code = code_of(outbox.last)
    other = sqlite3.connect(tmp_path / "senders.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Refused) as e:
            api.confirm_code("alice", X, code, actor=ALICE)
        assert e.value.code == "store_unavailable" and "locked" in e.value.detail
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [x.state for x in api.entries()] == ["pending"]
    assert api.confirm_code("alice", X, code, actor=ALICE).state == "verified"


def test_a_damaged_database_file_is_reported_not_overwritten(tmp_path: Path) -> None:
    db = tmp_path / "senders.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    from policyd.verification.store import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="damaged"):
        Store(db)
    assert db.read_bytes().startswith(b"this is not a database")


def test_the_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    Store(tmp_path / "s.sqlite").close()
    c = sqlite3.connect(tmp_path / "s.sqlite")
    assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c.close()


# -- the decision hook: verified addresses count for the policy service ----------------------


def _attrs(sender: str) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "192.0.2.50",
        "sasl_username": "alice",
        "sasl_method": "PLAIN",
        "sender": sender,
        "recipient": "friend@external.test",
    }


def test_verified_addresses_count_at_once_and_revoked_ones_stop_at_once(site: Path) -> None:
    cfg_path = site / "policyd.toml"
    cfg_path.write_text(config_text(site / "senders.sqlite", free_port()))
    runtime = build_runtime(load_config(cfg_path))
    service = PolicyService(runtime)
    api, outbox, _ = make_api(site)  # another connection, as `policyd senders` would be

    async def mx(sender: str) -> str:
        attrs = {**_attrs(sender), "sasl_username": "", "sasl_method": "", "policy_context": "mx"}
        _, d = await service.decide(Request.from_attrs({**attrs, "recipient": "bob@example.org"}))
        return d.reason.value

    async def action(sender: str) -> str:
        _, d = await service.decide(Request.from_attrs(_attrs(sender)))
        return d.reason.value

    async def go() -> None:
        assert await action(X) == "sender_not_owned"
        api.request("alice", X, actor=ALICE)
        assert await action(X) == "sender_not_owned"  # pending never counts
        api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
        assert runtime.lookups.peek_addresses("alice") is None  # changed: not from memory
        assert await action(X) == "sender_owned"
        assert await action("X@ELSEWHERE.TEST") == "sender_owned"
        assert runtime.lookups.peek_addresses("alice") == frozenset({"alice@example.org", X})
        # Foreign, so never one of "our" senders: the MX keeps taking mail from x@ unchecked
        # (protect_local_senders), while our own addresses stay protected.
        assert await runtime.lookups.owners_of(X, include_verified=False) == frozenset()
        assert await runtime.lookups.owners_of(X) == frozenset({"alice"})
        assert await mx(X) == "not_trusted"
        assert await mx("alice@example.org") == "sender_requires_login"
        assert isinstance(runtime.lookups, SourcedLookups)
        assert runtime.lookups.explain("alice")[0].startswith(f"owns {X}: verified ")
        api.revoke("alice", X, actor=ALICE)
        assert await action(X) == "sender_not_owned"
        # a store that cannot be read never lets a decision pass: the 451
        api.add_unverified("alice", X, actor=Actor("cli"))
        api.store.close()
        (site / "senders.sqlite").chmod(0o000)
        for p in site.glob("senders.sqlite*"):
            p.unlink()
        os.mkdir(site / "senders.sqlite")  # now it cannot even be opened
        with pytest.raises(DirectoryUnavailable):
            await runtime.lookups.addresses_of("alice")
        assert await action(X) == "directory_unavailable"

    try:
        asyncio.run(go())
    finally:
        runtime.close()


def test_a_verified_address_grants_exactly_itself_never_its_extensions(
    site: Path,
) -> None:
    # alice verified x@, bob verified x+boss@: each owns exactly what was verified. The
    # foreign domain may give x+other@ to someone else: it is nobody's here (the delimiter
    # rules are for our own domains; before, x+other@ fell to alice).
    cfg_path = site / "policyd.toml"
    cfg_path.write_text(config_text(site / "senders.sqlite", free_port()))
    runtime = build_runtime(load_config(cfg_path))
    service = PolicyService(runtime)
    api, _, _ = make_api(site)
    api.add_unverified("alice", X, actor=Actor("cli"))
    api.add_unverified("bob", "x+boss@elsewhere.test", actor=Actor("cli"))

    async def reason(login: str, sender: str) -> str:
        _, d = await service.decide(Request.from_attrs({**_attrs(sender), "sasl_username": login}))
        return d.reason.value

    async def go() -> list[str]:
        return [
            await reason("alice", "x+boss@elsewhere.test"),
            await reason("bob", "x+boss@elsewhere.test"),
            await reason("alice", "x+other@elsewhere.test"),
        ]

    try:
        assert asyncio.run(go()) == ["sender_not_owned", "sender_owned", "sender_not_owned"]
    finally:
        runtime.close()


def test_policyd_check_explains_a_verified_address(site: Path) -> None:
    cfg = site / "policyd.toml"
    cfg.write_text(config_text(site / "senders.sqlite", free_port()))
    api, outbox, _ = make_api(site)
    api.request("alice", X, actor=ALICE)
    api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
    check = ("check", "-c", str(cfg), "--sasl-username", "alice", "--sender", X)
    r = _policyd(*check)
    assert r.returncode == 0, r.stderr
    assert "action=OK" in r.stdout
    assert f"login alice: owns {X}: verified " in r.stdout and " by code" in r.stdout
    api.revoke("alice", X, actor=ALICE)
    r = _policyd(*check)
    assert "action=553 5.7.1" in r.stdout and "verified" not in r.stdout
    r = _policyd("config-check", "-c", str(cfg))
    assert r.returncode == 0 and "sender verification: on" in r.stdout
    assert "local domains example.org" in r.stdout


def test_config_check_says_local_domains_must_be_set_with_ldap(site: Path) -> None:
    cfg = site / "policyd.toml"
    cfg.write_text('[directory]\nbackend = "ldap"\n[verification]\nenabled = true\n')
    r = _policyd("config-check", "-c", str(cfg))
    assert r.returncode == 1
    assert "verification.local_domains: must be set with directory.backend" in r.stderr


def test_sendmail_submission_gets_the_message_with_our_bounce_address(site: Path) -> None:
    out = site / "handed-over"
    script = site / "sendmail"
    script.write_text(f'#!/bin/sh\necho "$@" > {out}.args\ncat > {out}\n')
    script.chmod(0o755)
    failing = site / "sendmail-fails"
    failing.write_text(
        "#!/bin/sh\ncat >/dev/null\necho 'sendmail: fatal: queue file write error' >&2\nexit 75\n"
    )
    failing.chmod(0o755)
    cfg = site / "policyd.toml"
    extra = f'submission = "sendmail"\nsendmail_command = ["{script}", "-t", "-i"]\n'
    extra += 'bounce_address = "bounces@example.org"\n'
    cfg.write_text(config_text(site / "senders.sqlite", free_port(), extra))
    r = senders(cfg, "request", "alice", X)
    assert r.returncode == 0, r.stderr
    assert (site / "handed-over.args").read_text().split() == [
        "-t",
        "-i",
        "-f",
        "bounces@example.org",
    ]
    raw = out.read_bytes()
    assert b"\r\n" not in raw and raw.startswith(b"From: Example Mail <postmaster@example.org>\n")
    assert b"\nTo: x@elsewhere.test\n" in raw
    cfg.write_text(cfg.read_text().replace(str(script), str(failing)))
    r = senders(cfg, "--json", "request", "alice", "y@elsewhere.test")
    assert r.returncode == 1
    assert '"code": "mail_failed"' in r.stdout and "exited with 75" in r.stdout
    assert "queue file write error" in r.stdout
    r = senders(cfg, "list", "--state", "pending")
    assert "y@elsewhere.test" in r.stdout and "last error" in r.stdout


def test_the_admin_commands(site: Path) -> None:
    cfg = site / "policyd.toml"
    cfg.write_text(config_text(site / "senders.sqlite", free_port()))
    r = senders(cfg, "add", "alice", X)
    assert r.returncode == 2 and "--no-verify" in r.stderr  # the override must be spelt out
    r = senders(cfg, "add", "alice", X, "--no-verify")
    assert r.returncode == 0 and "verified (no mail, by admin)" in r.stdout
    r = senders(cfg, "block", "z@elsewhere.test")
    assert r.returncode == 0
    r = senders(cfg, "--json", "request", "bob", "z@elsewhere.test")
    assert r.returncode == 1 and '"code": "suppressed"' in r.stdout
    assert "z@elsewhere.test" in senders(cfg, "blocked").stdout
    assert senders(cfg, "unblock", "z@elsewhere.test").returncode == 0
    assert senders(cfg, "blocked").stdout.strip() == "(none)"
    assert senders(cfg, "revoke", "alice", X).returncode == 0
    r = senders(cfg, "revoke", "alice", X)
    assert r.returncode == 1 and "not among the verified ones" in r.stderr
    r = senders(cfg, "purge", "--older-than", "0")
    assert r.returncode == 0 and "purged 0 request(s)" in r.stdout  # revoked ones are kept
    r = senders(cfg, "audit")
    events = [line.split()[4] for line in r.stdout.splitlines()]
    assert events == ["add_unverified", "block", "unblock", "revoke", "purge"], r.stdout
    r = senders(cfg, "request", "alice", "x@example.org")
    assert r.returncode == 1 and "ask your administrator" in r.stderr


def _ask(port: int, sender: str) -> str:
    import socket

    request = "".join(f"{k}={v}\n" for k, v in _attrs(sender).items()) + "\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode().strip()


def test_policyd_serve_counts_verified_addresses_across_a_reload(site: Path) -> None:
    from tests.servers.postfix import PolicydProcess

    proc = PolicydProcess(site / "serve", free_port())
    (site / "serve").mkdir()
    (site / "serve" / "senders.txt").write_text("alice: alice@example.org\n")
    text = config_text(site / "senders.sqlite", free_port())
    proc.start(text)
    try:
        api, outbox, _ = make_api(site)
        assert _ask(proc.port, X).startswith("action=553 5.7.1")
        api.request("alice", X, actor=ALICE)
        api.confirm_code("alice", X, code_of(outbox.last), actor=ALICE)
        assert _ask(proc.port, X) == "action=OK"
        proc.reload(text)
        assert _ask(proc.port, X) == "action=OK"
        api.revoke("alice", X, actor=ALICE)
        assert _ask(proc.port, X).startswith("action=553 5.7.1")
    finally:
        proc.stop()
    assert code_of(outbox.last) not in proc.log_text()


def test_a_database_that_cannot_be_opened_stops_the_start_with_the_reason(site: Path) -> None:
    cfg = site / "policyd.toml"
    cfg.write_text(config_text(site / "missing-dir" / "senders.sqlite", free_port()))
    r = _policyd("config-check", "-c", str(cfg))
    assert r.returncode == 1
    assert "verification.database: verified senders: the verification database" in r.stderr
    assert "cannot be opened" in r.stderr or "read-only" in r.stderr
