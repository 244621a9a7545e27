"""Quotas through the policy service (PolicyService.decide_now), with the embedded in-memory
store: END-OF-MESSAGE counts, RCPT caps, overrides, exemptions, warn mode, suspension, the
decision line, and the [quotas] config. The same algorithm on a real redis-server:
tests/integration/test_quota_store.py and test_quota_redis.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from policyd.config import ConfigError, config_from_dict
from policyd.core.decision import Decision, Reason, Verdict, to_action
from policyd.core.request import Request
from policyd.decision_log import decision_line
from policyd.policy.actions import encode_decision
from policyd.policy.service import PolicyService
from policyd.quotas.service import format_duration
from policyd.runtime import build_runtime

SENDERS = "alice: alice@example.org\nbob: bob@example.org\ncarol: carol@other.example\n"


def service(tmp_path: Path, quotas: dict[str, Any], mode: str = "enforce") -> PolicyService:
    (tmp_path / "senders.txt").write_text(SENDERS)
    data: dict[str, Any] = {
        "directory": {"backend": "file", "file": "senders.txt"},
        "profiles": {"submission": {"role": "submission", "ports": [587], "mode": mode}},
        "quotas": {"enabled": True, **quotas},
    }
    return PolicyService(build_runtime(config_from_dict(data, "test.toml", tmp_path)))


def eom(login: str = "alice", rcpts: int = 1, size: int = 1000, **kw: str) -> Request:
    return Request(
        request="smtpd_access_policy",
        protocol_state="END-OF-MESSAGE",
        client_address=kw.get("client", "203.0.113.5"),
        sasl_username=login,
        sender=kw.get("sender", f"{login}@example.org"),
        instance=kw.get("instance", "1.2.3"),
        server_port="587",
        recipient_count=str(rcpts),
        size=str(size),
    )


def rcpt(login: str = "alice", instance: str = "9.9.9", sender: str = "") -> Request:
    return Request(
        request="smtpd_access_policy",
        protocol_state="RCPT",
        client_address="203.0.113.5",
        sasl_username=login,
        sender=sender or f"{login}@example.org",
        recipient="r@example.net",
        instance=instance,
        server_port="587",
    )


def decide(svc: PolicyService, req: Request) -> Decision:
    _, result = svc.decide_now(req)
    if isinstance(result, Decision):
        return result
    pending = result

    async def wait() -> Decision:
        return await pending

    return asyncio.run(wait())


def test_n_messages_then_the_next_is_refused_naming_the_limit(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 3, "messages_per_day": 10}})
    for _ in range(3):
        d = decide(svc, eom())
        assert (d.verdict, d.reason) == (Verdict.DUNNO, Reason.NOT_CHECKED_STATE)
    d = decide(svc, eom())
    assert (d.verdict, d.reason) == (Verdict.DEFER, Reason.QUOTA_EXCEEDED)
    assert d.reply.startswith("452 4.7.1 Sending quota exceeded for alice: messages_per_hour ")
    assert "(3 of 3" in d.reply and "try again in 20m" in d.reply
    encode_decision(d)  # a valid action
    line = decision_line(eom(), "submission", d, 0.001)
    assert "reason=quota_exceeded" in line and "messages_per_hour (3 of 3" in line
    # per login; another login is not affected
    assert decide(svc, eom("bob")).verdict is Verdict.DUNNO
    assert svc.quotas.service is not None
    assert svc.quotas.service.stats.counts[("messages_per_hour", "refused")] == 1
    assert svc.quotas.service.stats.counts[("all", "counted")] == 4


def test_logins_are_counted_case_insensitively(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 1}})
    assert decide(svc, eom("alice")).verdict is Verdict.DUNNO
    assert decide(svc, eom("ALICE")).verdict is Verdict.DEFER


def test_recipients_per_day_counts_recipient_count(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"recipients_per_day": 10}})
    assert decide(svc, eom(rcpts=6)).verdict is Verdict.DUNNO
    d = decide(svc, eom(rcpts=5))
    assert d.reason is Reason.QUOTA_EXCEEDED and "recipients_per_day (6 of 10" in d.reply
    assert decide(svc, eom(rcpts=4)).verdict is Verdict.DUNNO  # the refused one not counted
    assert decide(svc, eom(rcpts=1)).verdict is Verdict.DEFER


def test_bytes_per_day(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"bytes_per_day": 5000}})
    assert decide(svc, eom(size=4000)).verdict is Verdict.DUNNO
    d = decide(svc, eom(size=2000))
    assert d.reason is Reason.QUOTA_EXCEEDED and "bytes_per_day" in d.reply


def test_recipient_cap_at_rcpt_and_at_end_of_message(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"recipients_per_message": 2, "messages_per_hour": 5}})
    assert decide(svc, rcpt(instance="m1")).reply == "OK"
    assert decide(svc, rcpt(instance="m1")).reply == "OK"
    d = decide(svc, rcpt(instance="m1"))
    assert (d.verdict, d.reason) == (Verdict.DEFER, Reason.TOO_MANY_RECIPIENTS)
    assert d.reply.startswith("452 4.5.3 ") and "at most 2" in d.reply
    assert decide(svc, rcpt(instance="m2")).reply == "OK"  # the next message starts again
    # END-OF-MESSAGE with more than the cap (a client that got past RCPT): refused, not counted
    d = decide(svc, eom(rcpts=3, instance="m1"))
    assert d.reason is Reason.TOO_MANY_RECIPIENTS
    for _ in range(5):
        assert decide(svc, eom(rcpts=2)).verdict is Verdict.DUNNO


def test_a_refused_rcpt_is_not_counted_toward_the_cap(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"recipients_per_message": 1}})
    d = decide(svc, rcpt(instance="m1", sender="bob@example.org"))  # not owned: 553
    assert d.reason is Reason.SENDER_NOT_OWNED
    assert decide(svc, rcpt(instance="m1")).reply == "OK"


def test_early_refusal_at_rcpt_counts_nothing(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 2}, "early_refusal": True})
    for _ in range(5):
        assert decide(svc, rcpt(instance="a")).reply == "OK"
    assert decide(svc, eom(instance="a")).verdict is Verdict.DUNNO
    assert decide(svc, eom(instance="b")).verdict is Verdict.DUNNO
    d = decide(svc, rcpt(instance="c"))
    assert d.reason is Reason.QUOTA_EXCEEDED  # over quota: answered at RCPT already
    assert svc.quotas.service is not None
    assert svc.quotas.service.stats.counts[("messages_per_hour", "early_refused")] == 1


def test_overrides_per_domain_and_login_and_exemptions(tmp_path: Path) -> None:
    svc = service(
        tmp_path,
        {
            "limits": {"messages_per_hour": 1, "messages_per_day": 100},
            "domains": {"other.example": {"messages_per_hour": 3}},
            "logins": {"Bob": {"messages_per_hour": 2}},
            "exempt": ["carol@other.example", "@exempt.example"],
        },
    )
    cfg = svc.runtime.config.quotas
    assert cfg.limits_for("bob").messages_per_hour == 2
    assert cfg.limits_for("bob").messages_per_day == 100  # not set: the default
    assert cfg.limits_for("dave@other.example").messages_per_hour == 3
    assert cfg.limits_for("alice").messages_per_hour == 1
    assert cfg.is_exempt("carol@other.example") and cfg.is_exempt("x@exempt.example")
    assert not cfg.is_exempt("alice")
    results = [decide(svc, eom("bob")).verdict for _ in range(3)]
    assert results == [Verdict.DUNNO, Verdict.DUNNO, Verdict.DEFER]
    assert all(decide(svc, eom("carol@other.example")).verdict is Verdict.DUNNO for _ in range(5))


def test_warn_mode_logs_and_lets_through(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 1}}, mode="warn")
    assert decide(svc, eom()).verdict is Verdict.DUNNO
    d = decide(svc, eom())
    assert (d.verdict, d.reason) == (Verdict.DUNNO, Reason.QUOTA_EXCEEDED)
    assert "messages_per_hour" in d.would_have


def test_a_suspended_login_is_held_or_deferred(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 100}})
    assert decide(svc, eom()).verdict is Verdict.DUNNO
    q = svc.quotas.service
    assert q is not None
    asyncio.run(q.store.suspend("alice", "test"))
    d = decide(svc, eom())
    assert (d.verdict, d.reason, to_action(d)) == (
        Verdict.HOLD,
        Reason.LOGIN_SUSPENDED,
        "HOLD login suspended by policyd",
    )
    assert encode_decision(d) == b"action=HOLD login suspended by policyd\n\n"
    svc2 = service(tmp_path, {"suspended_action": "defer"})
    q2 = svc2.quotas.current(svc2.runtime.config, svc2.runtime.rules)
    assert q2 is not None
    asyncio.run(q2.store.suspend("alice", "test"))
    d = decide(svc2, eom())
    assert d.verdict is Verdict.DEFER and d.reply.startswith("451 4.7.1 Sending from alice")


def test_unauthenticated_and_other_states_are_not_counted(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 1}})
    for _ in range(3):
        decide(svc, eom(login=""))
        decide(
            svc,
            Request(
                request="smtpd_access_policy",
                protocol_state="DATA",
                sasl_username="alice",
                recipient_count="1",
            ),
        )
    assert decide(svc, eom()).verdict is Verdict.DUNNO
    assert decide(svc, eom()).verdict is Verdict.DEFER


def test_quotas_off_changes_nothing(tmp_path: Path) -> None:
    svc = service(tmp_path, {"enabled": False, "limits": {"messages_per_hour": 1}})
    for _ in range(3):
        assert decide(svc, eom()).verdict is Verdict.DUNNO
    assert svc.quotas.service is None


def test_counters_survive_a_reload_with_the_same_store(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 2}})
    assert decide(svc, eom()).verdict is Verdict.DUNNO
    data = {
        "directory": {"backend": "file", "file": "senders.txt"},
        "quotas": {"enabled": True, "limits": {"messages_per_hour": 2, "messages_per_day": 9}},
    }
    svc.runtime = build_runtime(config_from_dict(data, "test.toml", tmp_path))
    assert decide(svc, eom()).verdict is Verdict.DUNNO
    assert decide(svc, eom()).verdict is Verdict.DEFER


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.2, 45, 61, 1200, 3600, 7800)] == [
        "1s",
        "45s",
        "2m",
        "20m",
        "1h",
        "2h10m",
    ]


@pytest.mark.parametrize(
    ("quotas", "key"),
    [
        ({"limits": {"messages_per_hour": -1}}, "quotas.limits.messages_per_hour"),
        ({"limits": {"messages_per_minute": 1}}, "quotas.limits.messages_per_minute"),
        ({"store": "mysql://x"}, "quotas.store"),
        ({"over_quota_reply": "552 5.7.1 no"}, "quotas.over_quota_reply"),
        ({"over_quota_reply": "452 4.7.1 {nope}"}, "quotas.over_quota_reply"),
        (
            {"domains": {"example.org": {"messages_per_hour": "x"}}},
            "quotas.domains.example.org.messages_per_hour",
        ),
        ({"logins": {"bob": 3}}, "quotas.logins.bob"),
        ({"store_timeout": 0}, "quotas.store_timeout"),
        ({"on_store_error": "dunno"}, "quotas.on_store_error"),
        ({"notify": "nobody"}, "quotas.notify"),
        ({"compromise": {"threshold": 0}}, "quotas.compromise.threshold"),
        ({"colour": 1}, "quotas.colour"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, quotas: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        service(tmp_path, quotas)
    assert e.value.key == key


def test_defaults_are_off_with_no_limit(tmp_path: Path) -> None:
    cfg = config_from_dict({"directory": {"file": "x"}}, "t.toml", tmp_path).quotas
    assert (cfg.enabled, cfg.store, cfg.on_store_error, cfg.early_refusal) == (
        False,
        "none",
        "memory",
        False,
    )
    assert cfg.limits_for("anyone").messages_per_hour == 0


def test_no_decision_line_repeats_a_warning(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 1}})
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            decide(svc, eom())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_every_quotas_key_is_documented_in_the_shipped_config() -> None:
    import dataclasses
    import tomllib

    from policyd.config.quotas import CompromiseConfig, QuotaLimits, QuotasConfig

    doc = tomllib.loads((Path(__file__).parents[2] / "conf/policyd.toml").read_text())["quotas"]
    tables = {"limits", "compromise", "domains", "logins"}
    assert set(doc) == {f.name for f in dataclasses.fields(QuotasConfig)} - {"domains", "logins"}
    assert set(doc) - tables == {f.name for f in dataclasses.fields(QuotasConfig)} - tables
    assert set(doc["limits"]) == {f.name for f in dataclasses.fields(QuotaLimits)}
    assert set(doc["compromise"]) == {f.name for f in dataclasses.fields(CompromiseConfig)}


def test_an_exempt_login_is_never_limited_but_a_suspension_holds(tmp_path: Path) -> None:
    svc = service(tmp_path, {"limits": {"messages_per_hour": 1}, "exempt": ["alice"]})
    assert [decide(svc, eom()).verdict for _ in range(3)] == [Verdict.DUNNO] * 3
    q = svc.quotas.service
    assert q is not None
    asyncio.run(q.store.suspend("alice", "by an admin"))
    assert decide(svc, eom()).verdict is Verdict.HOLD


def test_warn_mode_does_not_hold_a_suspended_login(tmp_path: Path) -> None:
    svc = service(tmp_path, {}, mode="warn")
    q = svc.quotas.current(svc.runtime.config, svc.runtime.rules)
    assert q is not None
    asyncio.run(q.store.suspend("alice", "test"))
    d = decide(svc, eom())
    assert (d.verdict, d.reason, d.would_have) == (
        Verdict.DUNNO,
        Reason.LOGIN_SUSPENDED,
        "HOLD login suspended by policyd",
    )


def test_a_read_only_service_counts_nothing(tmp_path: Path) -> None:
    """`policyd check --protocol-state END-OF-MESSAGE` answers as the daemon would, and counts
    nothing."""
    svc = service(tmp_path, {"limits": {"messages_per_hour": 1}})
    svc.quotas.read_only = True
    assert [decide(svc, eom()).verdict for _ in range(3)] == [Verdict.DUNNO] * 3
    svc.quotas.read_only = False
    svc.quotas._config = None  # (a new service, as after a reload)
    assert [decide(svc, eom()).verdict for _ in range(2)] == [Verdict.DUNNO, Verdict.DEFER]


def test_memory_store_marks_are_swept_amortised_not_at_every_message() -> None:
    """Every counted message leaves a mark (for a later milter refusal) that lives 10 minutes:
    with thousands of them alive, the sweep of expired marks must not scan them all again at
    each message (it did: the END-OF-MESSAGE path went quadratic, 1,249 req/s in the bench)."""
    from policyd.quotas.store import Charge, MemoryStore

    class Counting(dict[tuple[str, str], Any]):
        scans = 0

        def items(self) -> Any:
            Counting.scans += 1
            return super().items()

    store = MemoryStore(clock=lambda: 1_000_000.0)
    store._marks = Counting()
    charges = [Charge("messages_per_day", 10**9, 86400.0, 1)]
    for n in range(20_000):
        assert store.charge_now(f"u{n % 50}@example.org", charges, True, f"Q{n:08X}").allowed
    assert len(store._marks) == 20_000
    assert (
        Counting.scans <= 10
    )  # (a sweep when the live marks doubled; before: one per message past 1024)
