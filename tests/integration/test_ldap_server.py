"""The policy server with the LDAP backend against a real slapd: faults end in the 451 within
the deadline, never in a hang, a crash or a pass; requests that need no lookup are not delayed."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from policyd.directory.cache import CachedLookups
from tests.integration.serverutil import (
    DEFER_LOOKUP,
    IN_RANGE,
    Client,
    authed,
    make_config,
    request,
    run,
    serving,
)
from tests.servers.slapd import Slapd

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(90)]

PEOPLE = "ou=people,dc=example,dc=org"
NOT_OWNED = "553 5.7.1 Sender address <bob@example.org> is not owned by user alice"


def ldap_config(tmp_path: Path, server: Slapd, **over: Any) -> Any:
    pw = tmp_path / "bind-password"
    pw.write_text(server.bind_password + "\n")
    ldap: dict[str, Any] = {
        "servers": [server.url],
        "bind_dn": server.bind_dn,
        "bind_password_file": str(pw),
        "user_base": PEOPLE,
        "connect_timeout": 1,
        "receive_timeout": 1,
    }
    ldap.update(over.pop("ldap", {}))
    overrides = {
        "directory": {"backend": "ldap", "lookup_deadline": 1.5, "threads": 2},
        "ldap": ldap,
        "cache": over.pop("cache", {"enabled": False}),
    }
    overrides.update(over)
    return make_config(tmp_path, overrides)


async def ask(address: str, attrs: dict[str, str]) -> tuple[str, float]:
    c = await Client.connect(address)
    try:
        t0 = time.monotonic()
        reply = await c.ask(attrs, timeout=10)
        return reply, time.monotonic() - t0
    finally:
        await c.aclose()


def test_answers_from_ldap(fresh_slapd: Slapd, tmp_path: Path) -> None:
    async def go() -> None:
        async with serving(ldap_config(tmp_path, fresh_slapd)) as h:
            a = h.address()
            assert (await ask(a, authed("alice", "Alice+x@Example.org")))[0] == "OK"
            assert (await ask(a, authed("alice", "sales@example.org")))[0] == "OK"  # group
            assert (await ask(a, authed("dave", "sales@example.org")))[0].startswith("553 5.7.1")
            assert (await ask(a, authed("alice", "bob@example.org")))[0] == NOT_OWNED
            for evil in ("*", "alice)(uid=*", "*)(|(uid=*", "\\2a", "al\udcffice"):
                assert (await ask(a, authed(evil, "alice@example.org")))[0].startswith("553 5.7.1")

    run(go())


def test_killed_slapd_gives_451_then_answers_after_restart(
    fresh_slapd: Slapd, tmp_path: Path
) -> None:
    async def go() -> None:
        async with serving(ldap_config(tmp_path, fresh_slapd)) as h:
            a = h.address()
            assert (await ask(a, authed("alice", "alice@example.org")))[0] == "OK"
            fresh_slapd.kill()
            reply, took = await ask(a, authed("alice", "alice@example.org"))
            assert reply == DEFER_LOOKUP
            assert took < 1.5 + 0.5
            fresh_slapd.start()  # same policyd, no restart
            assert (await ask(a, authed("alice", "alice@example.org")))[0] == "OK"
            assert (await ask(a, authed("alice", "bob@example.org")))[0] == NOT_OWNED

    run(go())


def test_frozen_slapd_gives_451_within_deadline_and_ranges_are_not_delayed(
    fresh_slapd: Slapd, tmp_path: Path
) -> None:
    async def go() -> None:
        async with serving(ldap_config(tmp_path, fresh_slapd)) as h:
            a = h.address()
            assert (await ask(a, authed("alice", "alice@example.org")))[0] == "OK"
            fresh_slapd.freeze()
            try:
                lookups = [
                    asyncio.ensure_future(ask(a, authed(f"user{i}", "x@example.org")))
                    for i in range(6)
                ]
                await asyncio.sleep(0.1)  # the lookups are now stuck on the frozen slapd
                for _ in range(20):
                    reply, took = await ask(
                        a, request(client_address=IN_RANGE, sender="x@y.example")
                    )
                    assert reply == "OK"
                    assert took < 0.25, f"allocated-range answer delayed {took:.3f}s by a hung LDAP"
                for reply, took in await asyncio.gather(*lookups):
                    assert reply == DEFER_LOOKUP
                    assert took < 1.5 + 1.0
            finally:
                fresh_slapd.thaw()
            await asyncio.sleep(0.2)
            assert (await ask(a, authed("alice", "alice@example.org")))[0] == "OK"

    run(go())


def test_stale_if_error_window_with_real_slapd(fresh_slapd: Slapd, tmp_path: Path) -> None:
    cfg = ldap_config(
        tmp_path,
        fresh_slapd,
        cache={"enabled": True, "positive_ttl": 0.2, "negative_ttl": 0.2, "stale_if_error": 2.0},
    )

    async def go() -> None:
        async with serving(cfg) as h:
            a = h.address()
            assert (await ask(a, authed("alice", "alice@example.org")))[0] == "OK"
            fresh_slapd.kill()
            await asyncio.sleep(0.4)  # past the TTL, inside the stale window
            assert (await ask(a, authed("alice", "alice@example.org")))[0] == "OK"
            assert (await ask(a, authed("alice", "bob@example.org")))[0] == NOT_OWNED
            assert (await ask(a, authed("bob", "bob@example.org")))[0] == DEFER_LOOKUP  # no data
            await asyncio.sleep(2.0)  # past the window
            assert (await ask(a, authed("alice", "alice@example.org")))[0] == DEFER_LOOKUP
            assert isinstance(h.runtime.lookups, CachedLookups)
            assert h.runtime.lookups.stats.stale >= 2

    run(go())


def test_wrong_bind_password_gives_451_not_a_crash(
    fresh_slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ldap_config(tmp_path, fresh_slapd)
    (tmp_path / "bind-password").write_text("wrong\n")

    async def go() -> None:
        async with serving(cfg) as h:
            a = h.address()
            for _ in range(3):
                assert (await ask(a, authed("alice", "alice@example.org")))[0] == DEFER_LOOKUP
            assert (await ask(a, request(client_address=IN_RANGE)))[0] == "OK"

    with caplog.at_level(logging.WARNING):
        run(go())
    assert "invalidCredentials" in caplog.text
    assert "wrong" not in caplog.text.replace("wrong bind", "")  # the password is never logged


def test_tls_with_wrong_ca_fails_closed_with_a_clear_log(
    fresh_slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert fresh_slapd.pki is not None
    cfg = ldap_config(
        tmp_path,
        fresh_slapd,
        ldap={"servers": [fresh_slapd.ldaps_url], "ca_file": str(fresh_slapd.pki.wrong_ca_cert)},
    )

    async def go() -> None:
        async with serving(cfg) as h:
            assert (await ask(h.address(), authed("alice", "alice@example.org")))[0] == DEFER_LOOKUP

    with caplog.at_level(logging.WARNING):
        run(go())
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate" in caplog.text.lower()
