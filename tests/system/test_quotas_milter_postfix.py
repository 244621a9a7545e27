"""System test: a message the header From: milter refuses is not counted against the quota.

Postfix runs smtpd_end_of_data_restrictions (policyd's quota check, which counts the message)
before the milter's verdict reaches smtpd, so a message `policyd milter` refuses with 550 was
already counted. The milter tells the shared store (a real redis-server): the count is taken
back, or, when its verdict comes first, the message is never counted. Postfix is built as in
test_quotas_postfix.py plus conf/postfix/milter.cf.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.postfix import PolicydProcess, free_port
from tests.servers.postfix_fixtures import require_postfix
from tests.servers.redis import RedisServer, server_binary
from tests.servers.requirements import require_binaries

pytestmark = [pytest.mark.postfix, pytest.mark.milter, pytest.mark.timeout(180)]
pytest.importorskip("Milter", reason="pymilter is not installed (pip install 'policyd[milter]')")

from tests.system.test_milter_postfix import (  # noqa: E402  (needs pymilter)
    MilterProcess,
    milter_cf_settings,
    send,
)
from tests.system.test_quotas_postfix import QuotaPostfix  # noqa: E402

SENDERS = "alice: alice@example.org\nbob: bob@example.org\n"


def config(redis: RedisServer, socket: Path | None = None) -> str:
    text = f"""
[directory]
backend = "file"
file = "senders.txt"
[quotas]
enabled = true
store = "{redis.url}"
[quotas.logins.alice]
messages_per_hour = 2
"""
    if socket is not None:
        text += f'[milter]\nlisten = "unix:{socket}"\nprofile = "submission"\ntimeout = 30\n'
    return text


@pytest.fixture(scope="module")
def mta() -> Iterator[tuple[QuotaPostfix, MilterProcess, RedisServer]]:
    require_postfix()
    require_binaries(server_binary(), why="the quota system test needs redis-server")
    base = Path(tempfile.mkdtemp(prefix="policyd-quotas-milter-"))
    base.chmod(0o755)  # (mkdtemp: 0700; Postfix's own user must get in)
    redis = RedisServer(base / "redis").start()
    policyd = PolicydProcess(base / "policyd", free_port())
    policyd.workdir.mkdir(parents=True)
    (policyd.workdir / "senders.txt").write_text(SENDERS)
    policyd.start(config(redis))
    mdir = base / "milter"
    mdir.mkdir(mode=0o755)
    (mdir / "senders.txt").write_text(SENDERS)
    milter = MilterProcess(mdir)
    milter.start(config(redis, milter.socket))
    postfix = QuotaPostfix(
        base / "postfix", policyd.port, extra_main_cf=milter_cf_settings(milter.socket)
    )
    try:
        postfix.start()
        yield postfix, milter, redis
    finally:
        postfix.stop()
        milter.stop()
        policyd.stop()
        redis.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_message_the_milter_refuses_is_not_counted(
    mta: tuple[QuotaPostfix, MilterProcess, RedisServer],
) -> None:
    pf, milter, _ = mta

    def mail(from_header: str) -> str:
        s = send(
            pf.ports["submission"],
            headers=[f"From: <{from_header}>"],
            sender="alice@example.org",
            login="alice",
            password="alice-secret",
        )
        return str(s.final)

    for _ in range(3):  # the header From: is bob's: 550 after DATA, three times
        assert mail("bob@example.org").startswith("550 5.7.1"), milter.log_text()
    assert "quota not counted: message refused by the milter" in milter.log_text()
    assert [mail("alice@example.org")[:3] for _ in range(2)] == ["250", "250"]
    refused = mail("alice@example.org")
    assert "Sending quota exceeded for alice: messages_per_hour (2 of 2)" in refused
