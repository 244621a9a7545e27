"""The existing-server tier (issue 26): policyd added to a server that already works, with the
commands the README gives (`policyd postfix-lines`, then the lines it prints), breaks nothing.

The server (tests/servers/existing_server.py): Postfix with postscreen on "25", Dovecot SASL
(LDAP passdb on a real slapd, logins user@domain), OpenDKIM signing submission, a content
filter loop, a check_client_access rule and an RBL-style reject on 25, DSL customers relaying
on 25 (in mynetworks), example.org and example.net each with its own alice, delivery to an
SMTP sink.
Every behaviour is recorded before policyd is integrated and asserted again after, then the
policy cases are checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.existing_server import (
    ACCESS_LISTED,
    DSL,
    DSL_RANGE,
    HOST,
    INTERNET,
    NEW_DSL,
    NEW_DSL_RANGE,
    POSTSCREEN_LISTED,
    RBL_LISTED,
    ROAMING,
    USERS,
    ContentFilter,
    ExistingServer,
    Outcome,
    require_existing_server,
    transaction,
)
from tests.servers.postfix import REPO, PolicydProcess, free_port

pytestmark = [pytest.mark.postfix, pytest.mark.existing_server, pytest.mark.timeout(300)]

pytest.importorskip("Milter", reason="pymilter is not installed (pip install 'policyd[milter]')")
pytest.importorskip("aiosmtpd", reason="the SMTP sink needs aiosmtpd")

from tests.system.test_milter_postfix import MilterProcess  # noqa: E402

ALICE_ORG, ALICE_NET, BOB = "alice@example.org", "alice@example.net", "bob@example.org"
EXTERNAL = "friend@external.test"

SENDERS = "".join(f"{login}: {login}\n" for login in USERS)


def policyd_config(workdir: Path, port: int, milter_socket: Path) -> str:
    return f"""\
# tests/system/test_existing_server.py
[server]
listen = ["127.0.0.1:{port}"]
[networks]
files = ["{workdir}/ranges.txt"]
[directory]
file = "{workdir}/senders.txt"
[milter]
listen = "unix:{milter_socket}"
"""


class Site:
    """The server, policyd (not yet in Postfix) and the milter, for one module."""

    def __init__(self, root: Path) -> None:
        self.server = ExistingServer(root / "server")
        self.policy = PolicydProcess(root / "policyd", free_port())
        self.milter: MilterProcess | None = None
        self.subjects = 0

    def send(self, port_name: str, **kw: object) -> Outcome:
        self.subjects += 1
        kw.setdefault("subject", f"case-{self.subjects}")
        return transaction(self.server.ports[port_name], **kw)  # type: ignore[arg-type]

    def delivered(self, subject: str, timeout: float = 20.0) -> bytes:
        """The message the sink got with this subject (waits for it)."""
        deadline = time.monotonic() + timeout
        needle = f"Subject: {subject}\r\n".encode()
        while True:
            for m in list(self.server.sink.messages):
                if needle in m.content:
                    return m.content
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nothing delivered with subject {subject!r}\n"
                    + "\n".join(self.server.log_text().splitlines()[-25:])
                )
            time.sleep(0.05)

    def last_subject(self) -> str:
        return f"case-{self.subjects}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    require_existing_server()
    root = Path(tempfile.mkdtemp(prefix="policyd-existing-"))
    root.chmod(0o755)
    s = Site(root)
    try:
        s.server.start()
        w = s.policy.workdir
        w.mkdir(parents=True)
        (w / "senders.txt").write_text(SENDERS)
        (w / "ranges.txt").write_text(
            f"{DSL_RANGE} dsl\n{NEW_DSL_RANGE} new-dsl domains=new-dsl.example\n"
        )
        milter_dir = s.server.queue / "policyd"
        config = policyd_config(w, s.policy.port, milter_dir / "milter.sock")
        s.policy.start(config)
        milter_dir.mkdir(mode=0o755)
        s.milter = MilterProcess(milter_dir)
        s.milter.start(config)
        yield s
    finally:
        if s.milter is not None:
            s.milter.stop()
        s.policy.stop()
        s.server.stop()
        if os.environ.get("POLICYD_KEEP_POSTFIX_DIR", "") in ("", "0"):
            import shutil

            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The behaviours the server has (asserted before and after integration)


def behaviours(s: Site) -> dict[str, str]:
    """Each behaviour, as a short outcome text (equal before and after = preserved)."""
    out: dict[str, str] = {}

    # 1. DKIM signature on submitted mail, through the content filter; Dovecot login on 587
    r = s.send(
        "submission", source=INTERNET, starttls=True, login=ALICE_ORG,
        password=USERS[ALICE_ORG], sender=ALICE_ORG, recipient=EXTERNAL,
    )  # fmt: skip
    msg = s.delivered(s.last_subject()) if r.sent else b""
    out["submission 587: Dovecot login, DKIM-signed, filtered"] = (
        f"{r.step} dkim={b'DKIM-Signature:' in msg} filtered={ContentFilter.HEADER in msg}"
    )
    # 2. the same on 465 (TLS on connect)
    r = s.send(
        "submissions", source=INTERNET, wrapper=True, login=ALICE_NET,
        password=USERS[ALICE_NET], sender=ALICE_NET, recipient=EXTERNAL,
    )  # fmt: skip
    msg = s.delivered(s.last_subject()) if r.sent else b""
    out["submissions 465: Dovecot login, DKIM-signed"] = (
        f"{r.step} dkim={b'DKIM-Signature:' in msg}"
    )
    # 3. no AUTH before STARTTLS on 587
    r = s.send("submission", source=INTERNET, sender=ALICE_ORG, recipient=EXTERNAL)
    out["submission 587: no AUTH offered before STARTTLS"] = f"auth offered={'AUTH' in r.ehlo}"
    # 4. postscreen drops a listed client
    r = s.send("mx", source=POSTSCREEN_LISTED, sender="x@spam.example", recipient=ALICE_ORG)
    out["port 25: postscreen drops a listed client"] = f"{r.step} {r.code}"
    # 5. the admin's check_client_access rule
    r = s.send("mx", source=ACCESS_LISTED, sender="x@other.example", recipient=ALICE_ORG)
    out["port 25: check_client_access rule"] = str(r)
    # 6. the RBL-style reject
    r = s.send("mx", source=RBL_LISTED, sender="x@other.example", recipient=ALICE_ORG)
    out["port 25: RBL-style reject"] = str(r)
    # 7. inbound mail on 25, delivered through the content filter, to the right alice
    r = s.send("mx", source=INTERNET, sender="friend@external.test", recipient=ALICE_NET)
    msg = s.delivered(s.last_subject()) if r.sent else b""
    out["port 25: inbound mail delivered through the content filter"] = (
        f"{r.step} filtered={ContentFilter.HEADER in msg}"
    )
    # 8. a DSL customer from our allocated range relays on 25
    r = s.send("mx", source=DSL, sender="customer@dsl-customer.example", recipient=EXTERNAL)
    if r.sent:
        s.delivered(s.last_subject())
    out["port 25: DSL customer in the allocated range relays"] = r.step
    # 9. the host relays its own (webmail, cron) mail
    r = s.send("mx", source=HOST, sender=ALICE_ORG, recipient=EXTERNAL)
    if r.sent:
        s.delivered(s.last_subject())
    out["port 25: the host relays its own mail"] = r.step
    # 10. the Internet cannot relay
    r = s.send("mx", source=INTERNET, sender="x@other.example", recipient=EXTERNAL)
    out["port 25: no open relay"] = f"{r.step} {r.code}"
    return out


EXPECTED_BEFORE = {
    "submission 587: Dovecot login, DKIM-signed, filtered": "sent dkim=True filtered=True",
    "submissions 465: Dovecot login, DKIM-signed": "sent dkim=True",
    "submission 587: no AUTH offered before STARTTLS": "auth offered=False",
    "port 25: postscreen drops a listed client": "connect 521",
    "port 25: check_client_access rule": (
        "rcpt: 550 5.7.1 <unknown[127.0.0.5]>: Client host rejected: Your host is refused by our "
        "access rule"
    ),
    "port 25: RBL-style reject": (
        "rcpt: 554 5.7.1 <unknown[127.0.0.7]>: Client host rejected: Service unavailable; Client "
        "host "
        "[127.0.0.7] blocked using rbl.example"
    ),
    "port 25: inbound mail delivered through the content filter": "sent filtered=True",
    "port 25: DSL customer in the allocated range relays": "sent",
    "port 25: the host relays its own mail": "sent",
    "port 25: no open relay": "rcpt 454",
}


def readme_commands() -> list[str]:
    """The commands of the README's "Plug into Postfix" console block, in order."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Plug into Postfix") :]
    block = section[section.index("```console\n") + 11 :]
    block = block[: block.index("```")]
    return [ln.removeprefix("# ") for ln in block.splitlines() if ln.startswith("# ")]


def integrate(s: Site) -> list[str]:
    """Exactly the README's commands, pointed at this server (-c for policyd's config,
    --postfix-config for Postfix's: the admin's are the default ones)."""
    commands = readme_commands()
    assert commands[0].startswith("policyd postfix-lines > "), commands
    script = s.server.workdir / "policyd-postfix.sh"
    ran: list[str] = []
    here = ["-c", str(s.policy.config_file), "--postfix-config", str(s.server.etc)]
    for command in commands:
        words = command.split()
        if words[0] == "less":
            continue  # the admin reads it
        if words[:2] == ["policyd", "postfix-lines"]:
            r = subprocess.run(
                [sys.executable, "-m", "policyd", "postfix-lines", *here],
                capture_output=True, text=True, timeout=60, cwd=REPO,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            script.write_text(r.stdout)
            ran += [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("#")]
        elif words[0] == "sh":
            r = subprocess.run(
                ["sh", "-e", str(script)], capture_output=True, text=True, timeout=120
            )
            assert r.returncode == 0, f"{script.read_text()}\n{r.stdout}{r.stderr}"
            time.sleep(1.0)  # postfix reload: the master restarts its daemons
        elif words[:2] == ["policyd", "config-check"]:
            r = subprocess.run(
                [sys.executable, "-m", "policyd", *words[1:], *here],
                capture_output=True, text=True, timeout=60, cwd=REPO,
            )  # fmt: skip
            assert r.returncode == 0 and "postfix: OK" in r.stdout, r.stdout
        else:
            raise AssertionError(f"a README command this test does not know: {command!r}")
    return ran


# ---------------------------------------------------------------------------------------------


def test_existing_server_keeps_every_behaviour_and_gets_the_policy(site: Site) -> None:
    before = behaviours(site)
    assert before == EXPECTED_BEFORE, "the test server itself is not as designed"

    commands = integrate(site)
    assert any("postconf" in c for c in commands), commands

    after = behaviours(site)
    broken = {k: (before[k], after[k]) for k in before if after[k] != before[k]}
    assert not broken, f"behaviours changed by the integration: {broken}"

    # the policy: each alice sends only as herself, on 587 and 465
    for login, own, other in ((ALICE_ORG, ALICE_ORG, ALICE_NET), (ALICE_NET, ALICE_NET, ALICE_ORG)):
        ok = site.send(
            "submission", source=INTERNET, starttls=True, login=login, password=USERS[login],
            sender=own, recipient=EXTERNAL,
        )  # fmt: skip
        assert ok.sent, str(ok)
        site.delivered(site.last_subject())
        bad = site.send(
            "submissions", source=INTERNET, wrapper=True, login=login, password=USERS[login],
            sender=other, recipient=EXTERNAL,
        )  # fmt: skip
        assert (bad.step, bad.code) == ("rcpt", 553), str(bad)
        assert f"Sender address <{other}> is not owned by user {login}" in bad.text
    # header From: of the other alice: refused by the milter after DATA
    r = site.send(
        "submission", source=INTERNET, starttls=True, login=ALICE_ORG,
        password=USERS[ALICE_ORG], sender=ALICE_ORG, recipient=EXTERNAL, header_from=ALICE_NET,
    )  # fmt: skip
    assert (r.step, r.code) == ("data", 550), str(r)
    assert f"Header From <{ALICE_NET}> is not owned by user {ALICE_ORG}" in r.text
    # the milter decided that (its line), and it is not in port 25's path at all (its profile's
    # protect_local_senders is off: nothing to check there): inbound mail passes no line of it
    assert site.milter is not None
    assert "reason=header_from_not_owned" in site.milter.log_text()
    seen = site.milter.log_text().count("milter queue_id=")
    r = site.send("mx", source=INTERNET, sender="friend@external.test", recipient=ALICE_NET)
    assert r.sent, str(r)
    site.delivered(site.last_subject())
    assert site.milter.log_text().count("milter queue_id=") == seen
    # a roaming user without AUTH is told to enable it
    r = site.send("submission", source=ROAMING, starttls=True, sender=ALICE_ORG, recipient=EXTERNAL)
    assert (r.step, r.code) == ("rcpt", 554), str(r)
    assert "enable SMTP authentication" in r.text
    # port 25: an outsider forging one of our users' addresses (mx profile)
    r = site.send("mx", source=INTERNET, sender=ALICE_ORG, recipient=BOB)
    assert (r.step, r.code) == ("rcpt", 553), str(r)
    assert f"Sender address <{ALICE_ORG}> requires SMTP authentication" in r.text
    # policyd really decided the cases above (its decision lines)
    log = site.policy.log_text()
    assert re.search(r"profile=submission action=OK reason=sender_owned", log)
    assert re.search(r"profile=mx action=DUNNO reason=not_trusted", log)


def test_relay_on_25_lets_policyds_ranges_relay_and_nobody_else(site: Site) -> None:
    """`policyd postfix-lines --relay-on-25`: a customer range known only to policyd relays on
    port 25, with its sender domains; everything the server did before still holds."""
    integrate(site)  # (idempotent: the integration of the test above, or this one's own)
    before = behaviours(site)
    assert before == EXPECTED_BEFORE, before

    def relay(sender: str) -> Outcome:
        return site.send("mx", source=NEW_DSL, sender=sender, recipient=EXTERNAL)

    r = relay("customer@new-dsl.example")
    assert (r.step, r.code) == ("rcpt", 454), str(r)  # not in mynetworks: no relay yet

    pl = subprocess.run(
        [
            sys.executable, "-m", "policyd", "postfix-lines", "--relay-on-25",
            "-c", str(site.policy.config_file), "--postfix-config", str(site.server.etc),
        ],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert pl.returncode == 0, pl.stderr
    script = site.server.workdir / "policyd-relay-on-25.sh"
    script.write_text(pl.stdout)
    done = subprocess.run(["sh", "-e", str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{pl.stdout}\n{done.stderr}"
    time.sleep(1.0)

    r = relay("customer@new-dsl.example")
    assert r.sent, str(r)
    site.delivered(site.last_subject())
    r = relay("customer@elsewhere.example")  # the range's sender domains still hold
    assert (r.step, r.code) == ("rcpt", 553), str(r)
    assert "is not allowed from network new-dsl" in r.text
    after = behaviours(site)
    assert after == before, {k: (before[k], after[k]) for k in before if after[k] != before[k]}
