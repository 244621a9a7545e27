"""A stolen login: one login sending from 12 networks in 5 minutes is suspended, its messages
are answered HOLD, the admin gets one mail at a real SMTP sink (the verification mail's
submission path), `unsuspend` lets it send again. Also: the first time a login goes over a
quota, one mail per period. On the in-memory store and on a real redis-server."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.config import config_from_dict
from policyd.core.decision import Decision, Reason, Verdict
from policyd.core.request import Request
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from tests.servers.redis import RedisServer
from tests.servers.smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(60)

SENDERS = "alice: alice@example.org\nbob: bob@example.org\n"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    s = SmtpSink().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(params=["none", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "none":
        return "none"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def service(tmp_path: Path, sink: SmtpSink, store: str, **quotas: Any) -> PolicyService:
    (tmp_path / "senders.txt").write_text(SENDERS)
    data: dict[str, Any] = {
        "directory": {"backend": "file", "file": "senders.txt"},
        "verification": {"mail": {"smtp_port": sink.port, "from_address": "policyd@example.org"}},
        "quotas": {
            "enabled": True,
            "store": store,
            "notify": "abuse@example.org",
            "compromise": {"enabled": True, "window": 300.0, "threshold": 10.0},
            **quotas,
        },
    }
    return PolicyService(build_runtime(config_from_dict(data, "test.toml", tmp_path)))


def eom(login: str, client: str, sender: str | None = None) -> Request:
    return Request(
        request="smtpd_access_policy",
        protocol_state="END-OF-MESSAGE",
        client_address=client,
        sasl_username=login,
        sender=f"{login}@example.org" if sender is None else sender,
        recipient_count="1",
        size="900",
        server_port="587",
    )


async def decide(svc: PolicyService, req: Request) -> Decision:
    return (await svc.decide(req))[1]


def test_twelve_networks_suspend_hold_notify_once_unsuspend(
    tmp_path: Path, sink: SmtpSink, store_url: str
) -> None:
    svc = service(tmp_path, sink, store_url)

    async def main() -> None:
        alice = [await decide(svc, eom("alice", f"198.51.{i}.7")) for i in range(12)]
        # a busy user on one network is not a thief
        bob = [await decide(svc, eom("bob", f"192.0.2.{i}")) for i in range(1, 30)]
        assert [d.verdict for d in alice[:10]] == [Verdict.DUNNO] * 10
        assert [(d.verdict, d.reason) for d in alice[10:]] == [
            (Verdict.HOLD, Reason.LOGIN_SUSPENDED)
        ] * 2
        assert all(d.verdict is Verdict.DUNNO for d in bob)
        await asyncio.to_thread(sink.wait_for, 1)
        await asyncio.sleep(0.3)
        assert len(sink.messages) == 1  # once, not per message
        mail = sink.messages[0]
        assert mail.rcpt_tos == ("abuse@example.org",)
        msg = email.message_from_bytes(mail.content, policy=email.policy.default)
        assert msg["Subject"] == "policyd suspended the login alice"
        text = msg.get_body().get_content()  # type: ignore[union-attr]
        assert "networks=11" in text and "policyd quota unsuspend alice" in text

        q = svc.quotas.service
        assert q is not None
        await q.store.unsuspend("alice")
        after = [await decide(svc, eom("alice", f"198.51.100.{i}")) for i in (7, 8)]
        assert [d.verdict for d in after] == [Verdict.DUNNO, Verdict.DUNNO]
        await svc.quotas.close()

    asyncio.run(main())


def test_not_owned_refusals_and_null_senders_are_signals(
    tmp_path: Path, sink: SmtpSink, store_url: str
) -> None:
    svc = service(tmp_path, sink, store_url, notify="")
    rcpt = Request(
        request="smtpd_access_policy",
        protocol_state="RCPT",
        client_address="192.0.2.1",
        sasl_username="alice",
        sender="bob@example.org",
        recipient="x@example.net",
        server_port="587",
    )

    async def main() -> list[Decision]:
        out = [await decide(svc, rcpt) for _ in range(4)]  # 2 points each
        out.append(await decide(svc, eom("alice", "192.0.2.1", sender="")))  # +1
        out.append(await decide(svc, eom("alice", "192.0.2.1", sender="")))  # +1 = 10
        await svc.quotas.close()
        return out

    got = asyncio.run(main())
    assert [d.reason for d in got[:4]] == [Reason.SENDER_NOT_OWNED] * 4
    assert got[4].verdict is Verdict.DUNNO
    assert (got[5].verdict, got[5].reason) == (Verdict.HOLD, Reason.LOGIN_SUSPENDED)
    assert not sink.messages  # notify = "": no mail


def test_first_quota_hit_in_a_period_is_notified_once(
    tmp_path: Path, sink: SmtpSink, store_url: str
) -> None:
    svc = service(tmp_path, sink, store_url, limits={"messages_per_hour": 2})

    async def main() -> list[Decision]:
        out = [await decide(svc, eom("alice", "192.0.2.1")) for _ in range(6)]
        await svc.quotas.close()  # waits for the notifications under way
        return out

    got = asyncio.run(main())
    assert [d.reason for d in got[2:]] == [Reason.QUOTA_EXCEEDED] * 4
    sink.wait_for(1)
    assert len(sink.messages) == 1
    msg = email.message_from_bytes(sink.messages[0].content, policy=email.policy.default)
    assert msg["Subject"] == "policyd: alice went over its quota messages_per_hour"


def test_countries_from_a_maxmind_database_are_a_signal(
    tmp_path: Path, sink: SmtpSink, store_url: str
) -> None:
    from tests.servers.mmdb import write_country_db

    pytest.importorskip("maxminddb", reason="python3-maxminddb is not installed")
    db = write_country_db(
        tmp_path / "countries.mmdb",
        {
            "198.51.100.0/24": "DE",
            "203.0.113.0/24": "BR",
            "192.0.2.0/24": "JP",
            "2001:db8:5::/48": "US",
        },
    )
    svc = service(
        tmp_path,
        sink,
        store_url,
        notify="",
        compromise={
            "enabled": True,
            "geoip_database": str(db),
            "country_points": 3.0,
            "network_points": 0.0,
            "threshold": 9.0,
        },
    )
    clients = ["198.51.100.1", "198.51.100.2", "203.0.113.1", "192.0.2.1", "2001:db8:5::1"]

    async def main() -> list[Decision]:
        out = [await decide(svc, eom("alice", c)) for c in clients]
        out.append(await decide(svc, eom("bob", "198.51.100.1")))
        await svc.quotas.close()
        return out

    got = asyncio.run(main())
    # DE, DE, BR, JP: 2 more countries = 6 points; then US: 9 = the threshold
    assert [d.verdict for d in got[:4]] == [Verdict.DUNNO] * 4
    assert (got[4].verdict, got[4].reason) == (Verdict.HOLD, Reason.LOGIN_SUSPENDED)
    assert got[5].verdict is Verdict.DUNNO


def test_a_bad_geoip_database_is_a_config_error(tmp_path: Path, sink: SmtpSink) -> None:
    from policyd.config import ConfigError

    pytest.importorskip("maxminddb", reason="python3-maxminddb is not installed")
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database")
    with pytest.raises(ConfigError) as e:
        service(tmp_path, sink, "none", compromise={"geoip_database": str(bad)})
    assert e.value.key == "quotas.compromise.geoip_database"
    assert str(bad) in e.value.why


def test_notify_user_also_mails_the_login_itself_once(
    tmp_path: Path, sink: SmtpSink, store_url: str
) -> None:
    """`notify_user`: the first quota hit in a period is mailed to the admin and to the login
    itself when it is an address (once each); a login without "@" gets none."""
    svc = service(tmp_path, sink, store_url, limits={"messages_per_hour": 1}, notify_user=True)

    async def main() -> None:
        for login in ("dave@example.org", "alice"):
            for _ in range(4):
                await decide(
                    svc, eom(login, "192.0.2.1", sender=f"{login.split('@')[0]}@x.example")
                )
        await svc.quotas.close()

    asyncio.run(main())
    sink.wait_for(3)
    got = sorted(
        (m.rcpt_tos[0], email.message_from_bytes(m.content, policy=email.policy.default)["To"])
        for m in list(sink.messages)
    )
    assert got == [
        ("abuse@example.org", "abuse@example.org"),
        ("abuse@example.org", "abuse@example.org"),
        ("dave@example.org", "dave@example.org"),
    ], got
