"""Per-login quota limits from the login's LDAP entry ([quotas] ldap_attribute, issue 28),
against a real slapd holding a schema attribute for them: the entry's limits replace the
config's keys it names; a bad value logs once and the config's limits hold; the value is cached
like the other lookups (a change is seen after the cache's TTL); the directory away (no cached
value): the message is deferred, never counted under other limits."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import ldap3
import pytest

from policyd.config import config_from_dict
from policyd.core.request import Request
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from tests.integration.test_ldap_schemas import SCHEMA, acl_with
from tests.integration.test_quota_redis import quota_cli
from tests.integration.test_web_usage import cells
from tests.servers.redis import RedisServer
from tests.servers.slapd import Slapd
from tests.servers.slapd_fixtures import SlapdFactory
from tests.servers.web import Client, ldap_web_servers

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(90)]

PEOPLE = "ou=people,dc=example,dc=org"
ATTR = "policydQuotaLimits"


def set_limits(server: Slapd, uid: str, value: str | None) -> None:
    conn = ldap3.Connection(server.url, server.admin_dn, server.admin_password, auto_bind=True)
    try:
        dn = f"uid={uid},{PEOPLE}"
        if value is None:
            assert conn.modify(dn, {ATTR: [(ldap3.MODIFY_DELETE, [])]}), conn.result
            return
        conn.modify(dn, {"objectClass": [(ldap3.MODIFY_ADD, ["policydQuotaUser"])]})
        assert conn.modify(dn, {ATTR: [(ldap3.MODIFY_REPLACE, [value])]}), conn.result
    finally:
        conn.unbind()


def eom(login: str) -> Request:
    return Request.from_attrs(
        {
            "request": "smtpd_access_policy",
            "protocol_state": "END-OF-MESSAGE",
            "client_address": "203.0.113.9",
            "sasl_username": login,
            "sender": f"{login}@example.org",
            "recipient": "",
            "recipient_count": "1",
            "size": "1000",
        }
    )


def service(server: Slapd, tmp_path: Path, ttl: float = 60.0) -> PolicyService:
    pw = tmp_path / "pw"
    pw.write_text(server.bind_password + "\n")
    config = config_from_dict(
        {
            "directory": {"backend": "ldap"},
            "ldap": {
                "servers": [server.url],
                "bind_dn": server.bind_dn,
                "bind_password_file": str(pw),
                "user_base": PEOPLE,
                "connect_timeout": 1,
                "receive_timeout": 1,
            },
            "cache": {"positive_ttl": ttl, "negative_ttl": ttl, "stale_if_error": 0},
            "quotas": {
                "enabled": True,
                "ldap_attribute": ATTR,
                "limits": {"messages_per_hour": 4},
            },
        },
        source="test.toml",
        base_dir=tmp_path,
    )
    return PolicyService(build_runtime(config))


def sent(svc: PolicyService, login: str, n: int) -> list[str]:
    """The verdicts of `n` messages of `login` (in one event loop)."""

    async def go() -> list[str]:
        out = []
        for _ in range(n):
            _, d = await svc.decide(eom(login))
            out.append(d.verdict.value.upper())
        return out

    return asyncio.run(go())


@pytest.fixture
def server(slapd_factory: SlapdFactory, tmp_path: Path) -> Slapd:
    return slapd_factory(
        extra_schemas=(SCHEMA / "policyd-quota.schema",), acl_file=acl_with(tmp_path, ATTR)
    )


def test_the_entrys_limits_replace_the_configs(server: Slapd, tmp_path: Path) -> None:
    set_limits(server, "alice", "messages_per_hour=2, recipients_per_day=2000")
    svc = service(server, tmp_path)
    try:
        ok = sent(svc, "alice", 3)
        assert ok[:2] == ["DUNNO", "DUNNO"] and ok[2] == "DEFER", ok  # 2 from the entry
        # a login without the attribute: the config's 4
        assert sent(svc, "bob", 5) == ["DUNNO"] * 4 + ["DEFER"]
    finally:
        svc.runtime.close()


def test_a_bad_value_logs_once_and_the_configs_limits_hold(
    server: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    set_limits(server, "alice", "messages_per_hour=lots")
    svc = service(server, tmp_path)
    caplog.set_level(logging.WARNING, logger="policyd.quotas")
    try:
        assert sent(svc, "alice", 5) == ["DUNNO"] * 4 + ["DEFER"]  # the config's 4
        bad = [r for r in caplog.records if "quota override unreadable" in r.getMessage()]
        assert len(bad) == 1, [r.getMessage() for r in bad]
        assert "login=alice" in bad[0].getMessage() and "lots" in bad[0].getMessage()
    finally:
        svc.runtime.close()


def test_the_value_is_cached_like_the_other_lookups(server: Slapd, tmp_path: Path) -> None:
    set_limits(server, "alice", "messages_per_hour=1")
    svc = service(server, tmp_path, ttl=2.0)
    try:
        assert sent(svc, "alice", 1) == ["DUNNO"]
        searches = server.operations("Search")
        assert sent(svc, "alice", 1) == ["DEFER"]  # the entry's 1
        # answered from the cache (the one more search: the cn=Monitor read before)
        assert server.operations("Search") == searches + 1
        set_limits(server, "alice", "messages_per_hour=0")  # 0: no limit
        assert sent(svc, "alice", 1) == ["DEFER"]  # still the cached value
        time.sleep(2.1)
        assert sent(svc, "alice", 5) == ["DUNNO"] * 5  # the new one, after the TTL
    finally:
        svc.runtime.close()


def test_the_directory_away_defers_never_counts_under_other_limits(
    server: Slapd, tmp_path: Path
) -> None:
    set_limits(server, "alice", "messages_per_hour=1")
    svc = service(server, tmp_path)
    try:
        server.stop()
        _, d = asyncio.run(svc.decide(eom("alice")))
        assert d.verdict.value.upper() == "DEFER", d
        assert d.reply.startswith("451 4.3.0"), d.reply
    finally:
        svc.runtime.close()


def test_quota_show_and_the_usage_page_show_the_entrys_limits(
    server: Slapd, tmp_path: Path, redis_server: RedisServer
) -> None:
    """`policyd quota show` and the /usage page show the limits the decision applies: the
    config's, with the keys the login's LDAP attribute sets (one function computes them).
    Before: both showed the config's only."""
    pytest.importorskip("aiohttp")
    set_limits(server, "alice", "messages_per_hour=7, recipients_per_message=3")
    quotas = (
        f'[quotas]\nenabled = true\nstore = "{redis_server.url}"\nldap_attribute = "{ATTR}"\n'
        "[quotas.limits]\nmessages_per_hour = 4\nrecipients_per_day = 100\n"
    )
    # the decision: alice's 7 per hour, counted in the shared store
    pw = tmp_path / "pw"
    pw.write_text(server.bind_password + "\n")
    cfg = tmp_path / "policyd.toml"
    cfg.write_text(
        '[directory]\nbackend = "ldap"\n'
        f'[ldap]\nservers = ["{server.url}"]\nbind_dn = "{server.bind_dn}"\n'
        f'bind_password_file = "{pw}"\nuser_base = "{PEOPLE}"\n'
        "connect_timeout = 1\nreceive_timeout = 1\n" + quotas
    )
    from policyd.config import load_config

    svc = PolicyService(build_runtime(load_config(cfg)))
    try:
        assert sent(svc, "alice", 8) == ["DUNNO"] * 7 + ["DEFER"]
    finally:
        svc.runtime.close()

    shown = quota_cli(cfg, "show", "alice")
    assert shown.returncode == 0, shown.stderr
    assert "messages_per_hour: 7 of 7 used, 0 left" in shown.stdout, shown.stdout
    assert "recipients_per_day: 7 of 100 used" in shown.stdout  # (the config's key)
    assert "recipients_per_message: at most 3" in shown.stdout
    assert f"limits from LDAP: {ATTR}: messages_per_hour=7, recipients_per_message=3" in (
        shown.stdout
    )
    as_json = json.loads(quota_cli(cfg, "--json", "show", "alice").stdout)
    assert [(x["limit"], x["max"]) for x in as_json["limits"]] == [
        ("messages_per_hour", 7),
        ("recipients_per_day", 100),
    ]
    # bob has no attribute: the config's
    assert "messages_per_hour: 0 of 4 used" in quota_cli(cfg, "show", "bob").stdout

    with ldap_web_servers(server, tmp_path) as go:
        w = go(extra=quotas)
        c = Client(w.url)
        token = c.get("/login").form_value("csrf")
        assert c.post("/login", {"csrf": token, "user": "alice", "password": "alice-pw"}).status
        html = c.get("/usage").text
        assert cells(html, "Messages per hour")[:3] == ["7", "7", "0"], html
        assert cells(html, "Recipients per day")[:3] == ["7", "100", "93"]
        assert "at most 3 recipients" in html
        # the directory away: the page says so, never other numbers
        server.stop()
        html = c.get("/usage").text
        assert "cannot be reached right now" in html and "Messages per hour" not in html

    failed = quota_cli(cfg, "show", "alice")
    assert failed.returncode == 1, failed.stdout
    assert "could not be read" in failed.stderr and "Traceback" not in failed.stderr
