"""Postfix's ownership rule with the LDAP backend, against a real slapd: the most specific key
of a sender that has any owner decides, found by the reverse lookup (owner_filter)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ldap3
import pytest

from policyd.config import config_from_dict
from policyd.core.request import Request
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from tests.servers.slapd import Slapd

pytestmark = [pytest.mark.slapd, pytest.mark.timeout(60)]

PEOPLE = "ou=people,dc=example,dc=org"


def add_values(server: Slapd, dn: str, attr: str, *values: str) -> None:
    conn = ldap3.Connection(server.url, server.admin_dn, server.admin_password, auto_bind=True)
    try:
        assert conn.modify(dn, {attr: [(ldap3.MODIFY_ADD, list(values))]}), conn.result
    finally:
        conn.unbind()


def decide_all(
    server: Slapd, tmp_path: Path, asks: list[tuple[str, str]], delimiters: str = "+"
) -> list[str]:
    pw = tmp_path / "pw"
    pw.write_text(server.bind_password + "\n")
    config = config_from_dict(
        {
            "directory": {"backend": "ldap"},
            "addresses": {"extension_delimiters": delimiters},
            "ldap": {
                "servers": [server.url],
                "bind_dn": server.bind_dn,
                "bind_password_file": str(pw),
                "user_base": PEOPLE,
                "connect_timeout": 1,
                "receive_timeout": 1,
            },
        },
        source="test.toml",
        base_dir=tmp_path,
    )
    runtime = build_runtime(config)
    service = PolicyService(runtime)

    async def go() -> list[str]:
        out = []
        for login, sender in asks:
            attrs = {
                "request": "smtpd_access_policy",
                "protocol_state": "RCPT",
                "client_address": "203.0.113.9",
                "sasl_username": login,
                "sender": sender,
                "recipient": "friend@external.test",
            }
            _, decision = await service.decide(Request.from_attrs(attrs))
            out.append(decision.reason.value)
        return out

    try:
        return asyncio.run(go())
    finally:
        runtime.close()


def test_an_address_registered_to_another_user_is_refused_though_a_fallback_key_is_owned(
    fresh_slapd: Slapd, tmp_path: Path
) -> None:
    # bob holds alice's extension address; dave holds an address in carol's domain
    add_values(fresh_slapd, f"uid=Bob,{PEOPLE}", "mailLocalAddress", "alice+boss@example.org")
    add_values(fresh_slapd, f"uid=dave,{PEOPLE}", "mailLocalAddress", "dave@carol.example")
    got = decide_all(
        fresh_slapd,
        tmp_path,
        [
            ("alice", "alice+boss@example.org"),
            ("bob", "alice+boss@example.org"),
            ("alice", "alice+other@example.org"),
            ("carol", "dave@carol.example"),
            ("dave", "dave@carol.example"),
            ("carol", "anyone@carol.example"),
            ("alice", "sales+x@example.org"),  # a group's address, its extension: still shared
        ],
    )
    assert got == [
        "sender_not_owned",
        "sender_owned",
        "sender_owned",
        "sender_not_owned",
        "sender_owned",
        "sender_owned",
        "sender_owned",
    ]


def test_a_delimiter_cannot_turn_another_users_address_into_an_extension(
    fresh_slapd: Slapd, tmp_path: Path
) -> None:
    add_values(fresh_slapd, f"uid=alice,{PEOPLE}", "mailLocalAddress", "first@example.org")
    add_values(fresh_slapd, f"uid=Bob,{PEOPLE}", "mailLocalAddress", "first-last@example.org")
    got = decide_all(
        fresh_slapd,
        tmp_path,
        [
            ("alice", "first-last@example.org"),
            ("bob", "first-last@example.org"),
            ("alice", "first-other@example.org"),
        ],
        delimiters="+-",
    )
    assert got == ["sender_not_owned", "sender_owned", "sender_owned"]
