"""Quotas in running `policyd serve` processes sharing a real redis-server on loopback
(tests/servers/redis.py): counted at END-OF-MESSAGE across instances, refused with the limit
and the numbers, and the store killed: fail open per instance, one log line per state change,
the quota_store_unavailable metric, suspended flags kept stale-if-error, a suspension made
while the store was away written back when it returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ops import (
    REPO,
    Client,
    Daemon,
    _scrape,
    _value,
    free_port,
    start,
    write_config,
)
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.timeout(90)


def eom(login: str, sender: str = "", client: str = "203.0.113.5", n: int = 1) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "END-OF-MESSAGE",
        "protocol_name": "ESMTP",
        "client_address": client,
        "sasl_username": login,
        "sender": sender or f"{login}@example.org",
        "recipient": "",
        "recipient_count": str(n),
        "size": "1200",
        "instance": f"{time.monotonic_ns():x}",
        "policy_context": "submission",
    }


def rcpt(login: str, sender: str) -> dict[str, str]:
    return {**eom(login, sender), "protocol_state": "RCPT", "recipient": "x@example.net"}


def with_quotas(cfg: Path, url: str, extra: str = "") -> Path:
    cfg.write_text(
        cfg.read_text()
        + f"""
[quotas]
enabled = true
store = "{url}"
store_timeout = 0.2
store_retry_interval = 0.5
{extra}

[quotas.limits]
messages_per_hour = 3
"""
    )
    return cfg


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


def test_two_instances_share_counters_and_survive_the_store(
    tmp_path: Path, redis_server: RedisServer, daemons: list[Daemon]
) -> None:
    pytest.importorskip("prometheus_client")
    import redis

    mport = free_port()
    cfg = with_quotas(
        write_config(tmp_path, metrics_listen=f"127.0.0.1:{mport}"),
        redis_server.url,
        extra="[quotas.compromise]\nenabled = true\nnot_owned_points = 10\nthreshold = 10\n",
    )
    pa, pb = free_port(), free_port()
    a = start(daemons, tmp_path, cfg, pa)
    cfg_b = tmp_path / "b.toml"
    cfg_b.write_text(cfg.read_text().replace(f"127.0.0.1:{mport}", f"127.0.0.1:{free_port()}"))
    b = start(daemons, tmp_path, cfg_b, pb)
    ca, cb = Client(("127.0.0.1", pa)), Client(("127.0.0.1", pb))

    # counted across both instances: 3 per hour in total
    assert [ca.ask(eom("alice")), cb.ask(eom("alice")), ca.ask(eom("alice"))] == ["DUNNO"] * 3
    refused = cb.ask(eom("alice"))
    assert refused is not None and refused.startswith(
        "452 4.7.1 Sending quota exceeded for alice: messages_per_hour (3 of 3"
    )
    assert ca.ask(eom("alice")) == refused  # the same answer on A
    b.wait_log("reason=quota_exceeded")
    assert "messages_per_hour (3 of 3" in b.log()

    # a login suspended in the store: held by both; remembered while the store is away
    r = redis.Redis.from_url(redis_server.url)
    r.set("policyd:{dave}:suspended", "by test")
    r.close()
    assert ca.ask(eom("dave")) == "HOLD login suspended by policyd"
    assert cb.ask(eom("dave")) == "HOLD login suspended by policyd"

    fams = _scrape(mport)
    assert _value(fams, "policyd_quota_total", limit="messages_per_hour", result="refused") >= 1
    assert _value(fams, "policyd_quota_store_unavailable") == 0
    # counters by limit and result, never by login: no label names or holds one
    quota_samples = [x for name, f in fams.items() if "quota" in name for x in f]
    assert quota_samples
    for sample in quota_samples:
        assert set(sample.labels) <= {"limit", "result"}, sample
        assert not {"alice", "dave"} & set(sample.labels.values()), sample

    redis_server.kill()
    started = time.monotonic()
    for _ in range(3):  # under quota: never deferred because the store is away
        assert ca.ask(eom("bob")) == "DUNNO"
    assert time.monotonic() - started < 2.0  # the breaker keeps the store out: no wait each
    assert ca.ask(eom("dave")) == "HOLD login suspended by policyd"  # stale-if-error
    a.wait_log("quota store unavailable: redis://127.0.0.1")
    assert a.log().count("quota store unavailable: redis://") == 1  # once per state change
    assert _value(_scrape(mport), "policyd_quota_store_unavailable") == 1

    # a suspension decided while the store is away (a compromise signal on A) ...
    assert ca.ask(rcpt("carol", "alice@example.org")) is not None  # not owned: 553 + signal
    a.wait_log("login suspended login=carol")
    assert ca.ask(eom("carol")) == "HOLD login suspended by policyd"

    # ... is written to the store when it is back (empty: a replacement server)
    redis_server.start()
    time.sleep(0.6)  # the breaker's retry interval
    assert ca.ask(eom("erin")) == "DUNNO"
    a.wait_log("quota store available again")
    assert "1 suspension change(s) written back" in a.log()
    assert cb.ask(eom("carol")) == "HOLD login suspended by policyd"  # B sees A's suspension
    assert _value(_scrape(mport), "policyd_quota_store_unavailable") == 0
    for c in (ca, cb):
        c.close()


def test_on_store_error_defer(
    tmp_path: Path, redis_server: RedisServer, daemons: list[Daemon]
) -> None:
    cfg = with_quotas(write_config(tmp_path), redis_server.url, 'on_store_error = "defer"')
    port = free_port()
    start(daemons, tmp_path, cfg, port)
    c = Client(("127.0.0.1", port))
    assert c.ask(eom("alice")) == "DUNNO"
    redis_server.kill()
    assert c.ask(eom("alice")) == "451 4.3.0 Temporary quota lookup failure, please try again"
    c.close()


def quota_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policyd", "quota", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, "SUDO_USER": "admin-ann"},
    )


def test_quota_cli_show_reset_suspend_unsuspend_audited(
    tmp_path: Path, redis_server: RedisServer, daemons: list[Daemon]
) -> None:
    import redis

    cfg = with_quotas(write_config(tmp_path), redis_server.url)
    port = free_port()
    d = start(daemons, tmp_path, cfg, port)
    c = Client(("127.0.0.1", port))
    assert [c.ask(eom("alice")) for _ in range(2)] == ["DUNNO", "DUNNO"]

    shown = quota_cli(cfg, "show", "ALICE")
    assert shown.returncode == 0, shown.stderr
    assert "messages_per_hour: 2 of 3 used, 1 left, back to 0 in 40m" in shown.stdout
    assert "suspended: no" in shown.stdout
    as_json = json.loads(quota_cli(cfg, "--json", "show", "alice").stdout)
    assert as_json["limits"][0] | {"resets_in_seconds": 0} == {
        "limit": "messages_per_hour",
        "used": 2,
        "max": 3,
        "remaining": 1,
        "resets_in_seconds": 0,
    }

    r = quota_cli(cfg, "suspend", "alice", "--reason", "phished, ticket 4711")
    assert r.returncode == 0 and "suspend: alice: done" in r.stdout, r.stderr
    assert "quota suspend login=alice by=admin-ann" in r.stderr  # the audit line (stderr log)
    assert c.ask(eom("alice")) == "HOLD login suspended by policyd"  # the daemon honours it
    assert "phished, ticket 4711 (admin-ann)" in quota_cli(cfg, "show", "alice").stdout

    assert quota_cli(cfg, "unsuspend", "alice").returncode == 0
    assert c.ask(eom("alice")) == "DUNNO"
    assert c.ask(eom("alice")).startswith("452 4.7.1")  # type: ignore[union-attr]
    assert quota_cli(cfg, "reset", "alice").returncode == 0
    assert c.ask(eom("alice")) == "DUNNO"

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    audit = [json.loads(e) for e in client.lrange("policyd:audit:quota", 0, -1)]
    client.close()
    assert [(e["action"], e["login"], e["by"]) for e in audit] == [
        ("reset", "alice", "admin-ann"),
        ("unsuspend", "alice", "admin-ann"),
        ("suspend", "alice", "admin-ann"),
    ]
    redis_server.kill()
    failed = quota_cli(cfg, "show", "alice")
    assert failed.returncode == 1 and "policyd quota: redis://127.0.0.1" in failed.stderr
    c.close()
    assert "Traceback" not in d.log()


def test_quota_cli_needs_a_shared_store(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + "\n[quotas]\nenabled = true\n")
    r = quota_cli(cfg, "show", "alice")
    assert r.returncode == 1 and "needs a shared store" in r.stderr


def test_a_frozen_store_costs_one_short_timeout_then_nothing(
    tmp_path: Path, redis_server: RedisServer, daemons: list[Daemon]
) -> None:
    """SIGSTOP: the server accepts and never answers. The first request waits store_timeout
    (0.2 s), then the breaker keeps the store out: no request waits at all."""
    cfg = with_quotas(write_config(tmp_path), redis_server.url)
    cfg.write_text(
        cfg.read_text().replace("store_retry_interval = 0.5", "store_retry_interval = 30")
    )
    port = free_port()
    d = start(daemons, tmp_path, cfg, port)
    c = Client(("127.0.0.1", port))
    assert c.ask(eom("alice")) == "DUNNO"
    redis_server.freeze()
    try:
        t0 = time.monotonic()
        assert c.ask(eom("alice")) == "DUNNO"
        first = time.monotonic() - t0
        t0 = time.monotonic()
        assert [c.ask(eom("bob")) for _ in range(3)] == ["DUNNO"] * 3
        after = time.monotonic() - t0
    finally:
        redis_server.thaw()
    assert 0.15 < first < 1.5, first
    assert after < 0.1, after
    # meanwhile this instance counts in its own memory, from zero (1 so far): 3 per hour
    assert [c.ask(eom("alice")) for _ in range(2)] == ["DUNNO", "DUNNO"]
    assert c.ask(eom("alice")).startswith("452 4.7.1")  # type: ignore[union-attr]
    d.wait_log("quota store unavailable: redis://127.0.0.1")
    c.close()


def test_concurrent_messages_on_two_instances_never_exceed_the_limit(
    tmp_path: Path, redis_server: RedisServer, daemons: list[Daemon]
) -> None:
    """16 connections over two instances, 160 messages of one login at once, limit 50: exactly
    50 pass (one atomic script per message on the shared store: no read-then-write race)."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = with_quotas(write_config(tmp_path), redis_server.url)
    cfg.write_text(cfg.read_text().replace("messages_per_hour = 3", "messages_per_hour = 50"))
    ports = [free_port(), free_port()]
    for p in ports:
        start(daemons, tmp_path, cfg, p)

    def connection(i: int) -> list[str | None]:
        c = Client(("127.0.0.1", ports[i % 2]))
        try:
            return [c.ask(eom("alice")) for _ in range(10)]
        finally:
            c.close()

    with ThreadPoolExecutor(16) as pool:
        answers = [a for batch in pool.map(connection, range(16)) for a in batch]
    assert len(answers) == 160
    assert answers.count("DUNNO") == 50
    assert all(a == "DUNNO" or (a or "").startswith("452 4.7.1") for a in answers)


def test_rcpt_after_a_slow_directory_lookup_then_the_cap_and_the_early_answer(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The engine's answer comes from a (blocking, cached) directory lookup, a coroutine: the
    quota hook runs after it, on the shared store: the recipient cap, the early read-only
    answer, and a sender_not_owned refusal that is never capped."""
    import asyncio

    from policyd.core.decision import Reason
    from policyd.core.request import Request
    from policyd.policy.service import PolicyService
    from tests.integration.serverutil import BlockingDirectory, make_config, runtime_with

    config = make_config(
        tmp_path,
        {
            "quotas": {
                "enabled": True,
                "store": redis_server.url,
                "early_refusal": True,
                "limits": {"recipients_per_message": 2, "messages_per_hour": 1},
            }
        },
    )
    directory = BlockingDirectory(delays={"alice": 0.05})
    svc = PolicyService(runtime_with(config, directory))

    def rcpt(instance: str, sender: str = "alice@example.org") -> Request:
        return Request(
            request="smtpd_access_policy",
            protocol_state="RCPT",
            client_address="203.0.113.5",
            sasl_username="alice",
            sender=sender,
            recipient="x@example.net",
            instance=instance,
            server_port="587",
        )

    async def main() -> list[tuple[str, str]]:
        out = []
        _, first = svc.decide_now(rcpt("m1"))
        assert asyncio.iscoroutine(first)  # (the directory lookup, then the quota hook)
        d = await first
        out.append((d.reply, d.reason.value))
        for req in (rcpt("m1"), rcpt("m1"), rcpt("m1", "bob@example.org")):
            d = (await svc.decide(req))[1]
            out.append((d.reply[:9] or d.reply, d.reason.value))
        eom = Request(
            request="smtpd_access_policy",
            protocol_state="END-OF-MESSAGE",
            sasl_username="alice",
            sender="alice@example.org",
            instance="m1",
            recipient_count="2",
            server_port="587",
        )
        d = (await svc.decide(eom))[1]
        out.append((d.reply, d.reason.value))
        d = (await svc.decide(rcpt("m2")))[1]  # one message per hour: over at RCPT already
        out.append((d.reply[:9], d.reason.value))
        await svc.quotas.close()
        return out

    assert asyncio.run(main()) == [
        ("OK", Reason.SENDER_OWNED.value),
        ("OK", Reason.SENDER_OWNED.value),
        ("452 4.5.3", Reason.TOO_MANY_RECIPIENTS.value),
        ("553 5.7.1", Reason.SENDER_NOT_OWNED.value),
        ("", Reason.NOT_CHECKED_STATE.value),
        ("452 4.7.1", Reason.QUOTA_EXCEEDED.value),
    ]
    svc.runtime.close()


def test_policyd_check_counts_nothing(tmp_path: Path, redis_server: RedisServer) -> None:
    import redis

    cfg = with_quotas(write_config(tmp_path), redis_server.url)
    for _ in range(4):  # over the limit of 3 if it counted
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "policyd",
                "check",
                "--config",
                str(cfg),
                "--protocol-state",
                "END-OF-MESSAGE",
                "--sasl-username",
                "alice",
                "--sender",
                "alice@example.org",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert r.returncode == 0, r.stderr
        assert "DUNNO" in r.stdout and "Traceback" not in r.stderr
    client = redis.Redis.from_url(redis_server.url)
    assert client.keys("*") == []
    client.close()


def test_the_store_killed_under_load_defers_nothing_under_quota_and_counting_resumes(
    tmp_path: Path, redis_server: RedisServer, daemons: list[Daemon]
) -> None:
    """Two instances, 12 connections sending at once (many checks in flight in one pipelined
    write) while the store is SIGKILLed and later started again (empty, as a replacement):
    every message under quota is answered DUNNO, none deferred, none hangs past the client's
    timeout; once the store is back, the counters are counted there again."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import redis

    cfg = with_quotas(write_config(tmp_path), redis_server.url)
    cfg.write_text(cfg.read_text().replace("messages_per_hour = 3", "messages_per_hour = 100000"))
    ports = [free_port(), free_port()]
    for p in ports:
        start(daemons, tmp_path, cfg, p)
    stop = threading.Event()

    def connection(i: int) -> list[str | None]:
        c = Client(("127.0.0.1", ports[i % 2]))
        out = []
        try:
            while not stop.is_set():
                out.append(c.ask(eom(f"user{i}")))
        finally:
            c.close()
        return out

    with ThreadPoolExecutor(12) as pool:
        running = [pool.submit(connection, i) for i in range(12)]
        time.sleep(1.0)
        redis_server.kill()
        time.sleep(1.0)
        redis_server.start()
        time.sleep(1.5)  # (the breaker's retry interval is 0.5 s)
        stop.set()
        answers = [a for f in running for a in f.result(timeout=30)]
    assert len(answers) > 100, len(answers)
    assert set(answers) == {"DUNNO"}, {a for a in answers if a != "DUNNO"}
    # counting resumed on the (new, empty) store: the logins have counters there again
    deadline = time.monotonic() + 5
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        while True:
            keys = client.keys("policyd:{user*}:quota")
            if keys or time.monotonic() > deadline:
                break
            c = Client(("127.0.0.1", ports[0]))
            assert c.ask(eom("user0")) == "DUNNO"
            c.close()
            time.sleep(0.2)
    finally:
        client.close()
    assert keys
