"""Shared test setup. Real-server fixtures live in tests/servers/*_fixtures.py."""

from __future__ import annotations

import importlib.util

_PLUGINS = (
    "tests.servers.slapd_fixtures",
    "tests.servers.postfix_fixtures",
    "tests.servers.browser_fixtures",
    "tests.servers.redis_fixtures",
)

pytest_plugins = [m for m in _PLUGINS if importlib.util.find_spec(m) is not None]
