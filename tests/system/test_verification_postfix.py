"""System test: verifying an extra sender address, end to end with the real Postfix.

`policyd senders request alice x@elsewhere.test` submits the confirmation mail to a local
Postfix service (127.0.0.1 in mynetworks, as a site's port 25 would have it); Postfix relays it
with its smtp client to the aiosmtpd sink the test runs on 127.0.0.1 (a transport for
elsewhere.test only; everything else is discarded: nothing leaves the machine). The test reads
the code from the delivered mail and confirms it; alice then sends with SASL as
x@elsewhere.test through the submission service: `policyd serve` (envelope) and `policyd
milter` (header From:) both let it pass. After a revoke, the same session shape gets 553.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.postfix import (
    REPO,
    PolicydProcess,
    PostfixServer,
    free_port,
    parse_master_cf,
)
from tests.servers.postfix_fixtures import require_postfix
from tests.servers.requirements import require_binaries
from tests.servers.smtp_sink import SmtpSink
from tests.verification_helpers import code_of, token_of

pytestmark = [pytest.mark.postfix, pytest.mark.milter, pytest.mark.timeout(120)]
pytest.importorskip("Milter", reason="pymilter is not installed (pip install 'policyd[milter]')")

from tests.system.test_milter_postfix import (  # noqa: E402  (needs pymilter)
    MilterProcess,
    milter_cf_settings,
    send,
)

CONFIRM_CF = REPO / "conf" / "postfix" / "senders-confirm.cf"
#: The port the shipped lines use (amavis has 10024 and 10025; 10026 is its usual second one).
SHIPPED_PORT = 10046
BOUNCE = "bounces@example.org"
X = "x@elsewhere.test"
EXTERNAL = "friend@external.test"
SENDERS = "alice: alice@example.org\nbob: bob@example.org\n"


class RelayingPostfix(PostfixServer):
    """The test Postfix plus: an smtp client, a local submission service that trusts
    127.0.0.1 (where policyd hands in its confirmation mail), and a transport that relays
    elsewhere.test -- and only it -- to the sink on 127.0.0.1."""

    def __init__(
        self, workdir: Path, policy_port: int, sink_port: int, extra: dict[str, str]
    ) -> None:
        super().__init__(
            workdir,
            policy_port,
            extra_main_cf={
                **extra,
                "transport_maps": f"inline:{{ elsewhere.test=smtp:[127.0.0.1]:{sink_port} }}",
                "smtp_tls_security_level": "none",
                "smtp_dns_support_level": "disabled",
            },
        )
        self.local_port = free_port()

    def master_cf(self) -> str:
        # The shipped lines (conf/postfix/senders-confirm.cf), on this test's port, with this
        # test's bounce address in the sender map.
        shipped = parse_master_cf(CONFIRM_CF.read_text(encoding="utf-8"))
        assert [e.columns[0] for e in shipped] == [f"127.0.0.1:{SHIPPED_PORT}"]
        local = shipped[0]
        local.columns[0] = f"127.0.0.1:{self.local_port}"
        allowed = "inline:{postmaster@example.org=OK}"
        assert sum(allowed in a for a in local.args) == 1
        local.args = [a.replace(allowed, f"inline:{{{BOUNCE}=OK}}") for a in local.args]
        client = "smtp      unix  -       -       n       -       -       smtp\n"
        return super().master_cf() + local.render() + "\n" + client


def verification_section(db: Path, local_port: int) -> str:
    return f"""
[verification]
enabled = true
database = "{db}"
site_name = "Test Mail"
link_base_url = "https://mail.test/senders/confirm"
[verification.mail]
smtp_host = "127.0.0.1"
smtp_port = {local_port}
from_address = "postmaster@example.org"
bounce_address = "{BOUNCE}"
"""


POLICY = """
[logging]
level = "info"
[addresses]
realms = ["example.org"]
[directory]
backend = "file"
file = "senders.txt"
[profiles.submission]
role = "submission"
[profiles.mx]
role = "mx"
"""


def milter_text(socket: Path) -> str:
    return (
        POLICY
        + f"""
[milter]
listen = "unix:{socket}"
profile = "submission"
timeout = 30
"""
    )


class World:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sink = SmtpSink().start()
        self.policyd = PolicydProcess(base / "policyd", free_port())
        self.policyd.workdir.mkdir()
        (self.policyd.workdir / "senders.txt").write_text(SENDERS)
        self.db = base / "senders.sqlite"
        self.milter = MilterProcess(base / "milter")
        self.milter.workdir.mkdir()
        self.milter.workdir.chmod(0o755)
        (self.milter.workdir / "senders.txt").write_text(SENDERS)
        # A real DKIM signer, as sites run one: the non_smtpd_milters that the shipped
        # confirmation service uses (and policyd's header milter on smtpd_milters, as shipped).
        self.dkim = OpenDkim(base / "dkim")
        self.mta = RelayingPostfix(
            base / "postfix",
            self.policyd.port,
            self.sink.port,
            {**milter_cf_settings(self.milter.socket), "non_smtpd_milters": self.dkim.milter},
        )
        section = verification_section(self.db, self.mta.local_port)
        self.policy_config = POLICY + section
        self.policyd.start(self.policy_config)
        self.milter.start(milter_text(self.milter.socket) + section)
        self.mta.start()

    def close(self) -> None:
        stops = (self.mta.stop, self.milter.stop, self.policyd.stop, self.sink.stop, self.dkim.stop)
        for stop in stops:
            try:
                stop()
            except Exception:  # noqa: S110 - teardown: stop the rest anyway
                pass

    def senders(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "policyd",
                "senders",
                "-c",
                str(self.policyd.config_file),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            env={**os.environ},
        )

    def alice_sends(self, header_from: str, envelope: str = X):
        return send(
            self.mta.ports["submission"],
            headers=[f"From: {header_from}"],
            sender=envelope,
            recipient=EXTERNAL,
            login="alice",
            password=self.mta.users["alice"],
        )


class OpenDkim:
    """opendkim in the foreground on a unix socket, signing for example.org with a fresh key."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir()
        workdir.chmod(0o755)
        subprocess.run(
            ["opendkim-genkey", "-D", str(workdir), "-d", "example.org", "-s", "test"],
            check=True,
            timeout=60,
            capture_output=True,
        )
        self.socket = workdir / "opendkim.sock"
        conf = workdir / "opendkim.conf"
        conf.write_text(
            "Syslog no\nMode s\nDomain example.org\nSelector test\n"
            f"KeyFile {workdir / 'test.private'}\nSocket local:{self.socket}\nUMask 000\n"
            f"PidFile {workdir / 'opendkim.pid'}\nRequireSafeKeys false\n"
        )
        self.log = open(workdir / "opendkim.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["opendkim", "-f", "-x", str(conf)], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("opendkim did not start")
            time.sleep(0.05)

    @property
    def milter(self) -> str:
        return f"unix:{self.socket}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_postfix()
    require_binaries(
        "opendkim",
        "opendkim-genkey",
        why="the DKIM signing of confirmation mails needs opendkim (Debian: opendkim, "
        "opendkim-tools)",
    )
    base = Path(tempfile.mkdtemp(prefix="policyd-verify-sys-"))
    base.chmod(0o755)
    w = World(base)
    try:
        yield w
    finally:
        w.close()
        if os.environ.get("POLICYD_KEEP_POSTFIX_DIR", "") in ("", "0"):
            shutil.rmtree(base, ignore_errors=True)


def reply(s, step: str) -> tuple[int, str]:
    r = s.replies[step]
    return r.code, r.text


def test_request_confirm_send_revoke_through_postfix(world: World) -> None:
    # Before: x@elsewhere.test is not alice's.
    s = world.alice_sends(X)
    assert reply(s, "rcpt")[0] == 553, s.transcript

    r = world.senders("request", "alice", X)
    assert r.returncode == 0, r.stderr
    (msg,) = world.sink.wait_for(1)
    # It went through Postfix (its Received: line, its queue) to the sink, to that address only.
    assert msg.rcpt_tos == (X,) and msg.mail_from == "bounces@example.org"
    assert re.search(rb"^Received: from .*\r?\n\s+by mail\.test \(Postfix\)", msg.content, re.M)
    world.mta.wait_for_log(
        r"to=<x@elsewhere\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*status=sent"
    )
    assert b"Auto-Submitted: auto-generated" in msg.content
    # DKIM-signed on its way (the service runs non_smtpd_milters: the signer), and not
    # refused by policyd's header milter (which is not on it)
    assert re.search(rb"^DKIM-Signature: .*d=example\.org", msg.content, re.M | re.S), msg.content
    code, token = code_of(msg.content), token_of(msg.content)

    s = world.alice_sends(X)  # pending never counts
    assert reply(s, "rcpt")[0] == 553

    r = world.senders("confirm", "alice", X, code)
    assert r.returncode == 0, r.stderr

    # Envelope and header From: both pass now, with no restart.
    s = world.alice_sends(X)
    assert reply(s, "mail")[0] == 250 and reply(s, "rcpt")[0] == 250, s.transcript
    code_, text = reply(s, "data")
    assert code_ == 250 and "queued as" in text, s.transcript
    # Header From: x@elsewhere.test with alice's own envelope: the milter counts it too.
    s = world.alice_sends(X, envelope="alice@example.org")
    assert reply(s, "data")[0] == 250, s.transcript

    r = world.senders("revoke", "alice", X)
    assert r.returncode == 0, r.stderr
    s = world.alice_sends(X)
    rejected = f"<{EXTERNAL}>: Recipient address rejected"
    not_owned = f"Sender address <{X}> is not owned by user alice"
    assert reply(s, "rcpt") == (553, f"5.7.1 {rejected}: {not_owned}"), s.transcript
    s = world.alice_sends(X, envelope="alice@example.org")  # the milter stops counting it too
    assert reply(s, "data")[0] == 550, s.transcript

    # No code, token or password in any log of the run.
    logs = (
        world.policyd.log_text()
        + world.milter.log_text()
        + world.mta.log_text()
        + r.stdout
        + r.stderr
    )
    for secret in (code, token, world.mta.users["alice"]):
        assert secret not in logs


def test_the_confirmation_relay_takes_only_policyds_envelope_sender(world: World) -> None:
    """Any local process can connect to the loopback service; only policyd's bounce address
    is relayed, everything else is refused at RCPT (no way around the policy service)."""
    assert SHIPPED_PORT not in (10024, 10025, 10026)
    port = world.mta.local_port
    for sender in ("ceo@example.org", "alice@example.org", "x@elsewhere.test", ""):
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.ehlo("local.test")
            assert c.mail(sender)[0] == 250
            code, text = c.rcpt(X)
            assert code == 554 and b"Sender address rejected: Access denied" in text, (
                sender,
                code,
                text,
            )
    n = len(world.sink.messages)
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo("local.test")
        refused = c.sendmail(
            BOUNCE,
            [X],
            b"From: postmaster@example.org\r\nTo: x@elsewhere.test\r\n"
            b"Subject: relay test\r\n\r\nhello\r\n",
        )
        assert refused == {}
    msgs = world.sink.wait_for(n + 1)
    assert msgs[-1].mail_from == BOUNCE and b"DKIM-Signature:" in msgs[-1].content
