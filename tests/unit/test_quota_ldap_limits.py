"""Parsing a login's limits from its LDAP attribute ([quotas] ldap_attribute)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from policyd.config.quotas import QuotaLimits
from policyd.quotas.ldap_limits import LdapLimits, parse_limits

BASE = QuotaLimits(messages_per_hour=10, recipients_per_day=100)


def test_the_keys_named_replace_the_base() -> None:
    got = parse_limits(frozenset({"messages_per_hour=100, Recipients_Per_Day=2000"}), BASE)
    assert got == QuotaLimits(messages_per_hour=100, recipients_per_day=2000)
    assert parse_limits(frozenset({"bytes_per_day=0"}), BASE).bytes_per_day == 0
    assert parse_limits(frozenset(), BASE) is BASE
    # several values of the attribute are one list
    two = parse_limits(frozenset({"messages_per_day=5", "recipients_per_message=3"}), BASE)
    assert (two.messages_per_day, two.recipients_per_message) == (5, 3)


@pytest.mark.parametrize(
    "value",
    [
        "messages_per_hour=lots",
        "messages_per_hour=-1",
        "messages_per_minute=5",
        "messages_per_hour=1,messages_per_hour=2",
        "messages_per_hour",
        "messages_per_hour=1e9",
        "messages_per_hour=" + "9" * 16,
    ],
)
def test_a_bad_value_is_an_error(value: str) -> None:
    with pytest.raises(ValueError):
        parse_limits(frozenset({value}), BASE)


def test_a_bad_value_warns_once_and_gives_the_base(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="policyd.quotas")
    ldap = LdapLimits("policydQuotaLimits")
    for _ in range(3):
        assert ldap.limits("alice", frozenset({"messages_per_hour=x"}), BASE) is BASE
    assert len(caplog.records) == 1
    assert "login=alice" in caplog.records[0].getMessage()


def test_the_attribute_needs_the_ldap_directory() -> None:
    from pathlib import Path

    from policyd.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="quotas.ldap_attribute"):
        config_from_dict(
            {"quotas": {"enabled": True, "ldap_attribute": "policydQuotaLimits"}},
            source="t.toml",
            base_dir=Path("."),
        )
    with pytest.raises(ConfigError, match="quotas.ldap_attribute"):
        config_from_dict(
            {"quotas": {"ldap_attribute": "bad attr"}}, source="t.toml", base_dir=Path(".")
        )


def test_effective_limits_config_then_domain_then_login_then_ldap(tmp_path: Path) -> None:
    """The one computation the decision, `quota show` and /usage share."""
    from policyd.config import config_from_dict
    from policyd.quotas.ldap_limits import effective_limits

    qc = config_from_dict(
        {
            "quotas": {
                "enabled": True,
                "limits": {"messages_per_hour": 10, "messages_per_day": 50},
                "domains": {"example.org": {"messages_per_hour": 20}},
                "logins": {"alice@example.org": {"messages_per_day": 70}},
            },
        },
        "t.toml",
        tmp_path,
    ).quotas
    qc = dataclasses.replace(qc, ldap_attribute="policydQuotaLimits")
    assert effective_limits(qc, "x@other.example") == QuotaLimits(10, 50)
    assert effective_limits(qc, "bob@example.org") == QuotaLimits(20, 50)
    assert effective_limits(qc, "alice@example.org") == QuotaLimits(20, 70)
    ldap = frozenset({"messages_per_hour=3"})
    assert effective_limits(qc, "alice@example.org", ldap) == QuotaLimits(3, 70)
    assert effective_limits(qc, "alice@example.org", frozenset()) == QuotaLimits(20, 70)
    # a value it cannot read: the config's (logged once, elsewhere)
    assert effective_limits(qc, "alice@example.org", frozenset({"x=1"})) == QuotaLimits(20, 70)
