"""System test: sending quotas and a stolen login through a real Postfix.

policyd is added to Postfix's smtpd_end_of_data_restrictions exactly as README and
conf/postfix/quotas.cf say (postconf appending to an existing list), with its counters in a
real redis-server on loopback. A login sends N messages, the N+1th gets the quota answer at
end-of-data; a message refused at RCPT is not counted; the per-message recipient cap answers
at RCPT; a login sending from 12 networks (XCLIENT) is suspended, its next message is held
(postqueue -p shows it), the admin mail arrives at an SMTP sink, and `policyd quota
unsuspend` lets it send again.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
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
    SMTP_TIMEOUT,
    PolicydProcess,
    PostfixServer,
    _tls_client_context,
    free_port,
    send_mail,
)
from tests.servers.postfix_fixtures import require_postfix
from tests.servers.redis import RedisServer, server_binary
from tests.servers.requirements import require_binaries
from tests.servers.smtp_sink import SmtpSink

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(180)]

QUOTAS_CF = REPO / "conf" / "postfix" / "quotas.cf"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
USERS = {**PASSWORDS, "dave": "dave-secret"}
SENDERS = (
    "alice: alice@example.org\nbob: bob@example.org\ncarol: carol@example.org\n"
    "dave: dave@example.org\n"
)
RCPT = "friend@example.net"


def documented_entry() -> str:
    lines = [ln for ln in QUOTAS_CF.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 1
    return lines[0]


class QuotaPostfix(PostfixServer):
    """The test Postfix, then the documented postconf lines that ADD policyd to an existing
    smtpd_end_of_data_restrictions."""

    def write_config(self) -> None:
        super().write_config()
        entry = documented_entry().replace(
            "inet:127.0.0.1:10040", f"inet:127.0.0.1:{self.policy_port}"
        )
        c = str(self.config_dir)
        script = (
            f'current=$(postconf -c "{c}" -h smtpd_end_of_data_restrictions)\n'
            f'postconf -c "{c}" -e "smtpd_end_of_data_restrictions = '
            f'${{current:+$current, }}{entry}"\n'
        )
        subprocess.run(["bash", "-ec", script], check=True, timeout=30)


Setup = tuple["QuotaPostfix", PolicydProcess, RedisServer, SmtpSink]


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    require_postfix()
    require_binaries(server_binary(), why="the quota system test needs redis-server")
    base = Path(tempfile.mkdtemp(prefix="policyd-quotas-"))
    base.chmod(0o755)  # (mkdtemp: 0700; Postfix's own user must get in)
    redis = RedisServer(base / "redis").start()
    sink = SmtpSink().start()
    policyd = PolicydProcess(base / "policyd", free_port())
    (policyd.workdir).mkdir(parents=True)
    (policyd.workdir / "senders.txt").write_text(SENDERS)
    policyd.start(
        f"""
[directory]
backend = "file"
file = "senders.txt"
[verification.mail]
smtp_host = "127.0.0.1"
smtp_port = {sink.port}
from_address = "policyd@example.org"
[quotas]
enabled = true
store = "{redis.url}"
notify = "abuse@example.org"
[quotas.logins.alice]
messages_per_hour = 3
[quotas.logins.bob]
messages_per_hour = 2
[quotas.logins.carol]
recipients_per_message = 2
[quotas.compromise]
enabled = true
threshold = 10.0
"""
    )
    postfix = QuotaPostfix(
        base / "postfix",
        policyd.port,
        users=USERS,
        # an end-of-data list the site already has: policyd is added after it
        extra_main_cf={"smtpd_end_of_data_restrictions": "reject_unauth_pipelining"},
    )
    try:
        postfix.start()
        yield postfix, policyd, redis, sink
    finally:
        postfix.stop()
        policyd.stop()
        sink.stop()
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)


def mail(pf: PostfixServer, login: str, sender: str = "", xclient: str | None = None) -> str:
    """One message; the reply that decided it ("250 ..." when accepted)."""
    s = send_mail(
        pf.ports["submission"],
        sender=sender or f"{login}@example.org",
        recipient=RCPT,
        login=login,
        password=USERS[login],
        xclient_addr=xclient,
    )
    return str(s.final)


def test_the_documented_lines_add_to_the_existing_list(setup: Setup) -> None:
    pf = setup[0]
    value = subprocess.run(
        ["postconf", "-c", str(pf.config_dir), "-h", "smtpd_end_of_data_restrictions"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert value.startswith("reject_unauth_pipelining, check_policy_service {")
    readme = (REPO / "README.md").read_text()
    assert f"${{current:+$current, }}{documented_entry()}" in readme


def test_n_messages_then_the_next_is_refused_at_end_of_data(setup: Setup) -> None:
    pf, policyd = setup[0], setup[1]
    assert [mail(pf, "alice")[:3] for _ in range(3)] == ["250"] * 3
    refused = mail(pf, "alice")
    # (Postfix puts its own "<END-OF-MESSAGE>: End-of-data rejected:" before our text)
    assert refused.startswith("452 4.7.1 <END-OF-MESSAGE>: End-of-data rejected: "), refused
    assert refused.endswith(
        "Sending quota exceeded for alice: messages_per_hour (3 of 3); try again in 20m"
    )
    policyd.wait_for_log(r"login=alice .*reason=quota_exceeded")


def test_a_message_refused_at_rcpt_is_not_counted(setup: Setup) -> None:
    pf = setup[0]
    for _ in range(3):  # bob may not send as alice: 553 at RCPT, never at end-of-data
        assert mail(pf, "bob", sender="alice@example.org").startswith("553 5.7.1")
    assert [mail(pf, "bob")[:3] for _ in range(2)] == ["250", "250"]
    assert "Sending quota exceeded for bob: messages_per_hour (2 of 2)" in mail(pf, "bob")


def test_the_recipient_cap_answers_at_rcpt(setup: Setup) -> None:
    pf = setup[0]
    smtp = smtplib.SMTP("127.0.0.1", pf.ports["submission"], timeout=SMTP_TIMEOUT)
    try:
        smtp.ehlo()
        smtp.starttls(context=_tls_client_context())
        smtp.ehlo()
        smtp.login("carol", USERS["carol"])
        assert smtp.docmd("MAIL", "FROM:<carol@example.org>")[0] == 250
        codes = [smtp.docmd("RCPT", f"TO:<r{i}@example.net>") for i in range(3)]
        assert [c for c, _ in codes] == [250, 250, 452]
        assert codes[2][1].startswith(b"4.5.3 <r2@example.net>: Recipient address rejected: ")
        assert b"Too many recipients for one message (at most 2)" in codes[2][1]
        code, msg = smtp.data(b"Subject: two of three\r\n\r\nhello\r\n")
        assert code == 250, msg  # sent to the two accepted recipients
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        smtp.close()


def test_a_stolen_login_is_held_and_reported_then_unsuspended(setup: Setup) -> None:
    pf, policyd, _, sink = setup
    replies = [mail(pf, "dave", xclient=f"198.51.{i}.20") for i in range(12)]
    assert all(r.startswith("250") for r in replies), replies  # a HOLD is accepted
    policyd.wait_for_log(r"login suspended login=dave networks=11")
    held = re.search(r"queued as ([0-9A-Za-z]+)", replies[10])
    assert held is not None
    queue = subprocess.run(
        ["postqueue", "-c", str(pf.config_dir), "-p"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert f"{held.group(1)}!" in queue, queue  # "!": in the hold queue
    assert "dave@example.org" in queue

    def suspended_mails() -> list[str]:
        return [
            m.rcpt_tos[0]
            for m in list(sink.messages)
            if email.message_from_bytes(m.content, policy=email.policy.default)["Subject"]
            == "policyd suspended the login dave"
        ]

    deadline = time.monotonic() + 10
    while not suspended_mails() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert suspended_mails() == ["abuse@example.org"]  # once, not per held message

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "policyd",
            "quota",
            "--config",
            str(policyd.config_file),
            "unsuspend",
            "dave",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    after = mail(pf, "dave", xclient="203.0.113.20")
    assert after.startswith("250")
    queue_id = re.search(r"queued as ([0-9A-Za-z]+)", after)
    assert queue_id is not None
    pf.wait_delivered(queue_id.group(1), RCPT)  # not held: delivered (discarded)
