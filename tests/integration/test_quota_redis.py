"""Quotas in running `policyd serve` processes sharing a real redis-server on loopback
(tests/servers/redis.py): counted at END-OF-MESSAGE across instances, refused with the limit
and the numbers, and the store killed: fail open per instance, one log line per state change,
the quota_store_unavailable metric, suspended flags kept stale-if-error, a suspension made
while the store was away written back when it returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ops import (
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
