"""Logger names are what admins grep and filter on (`policyd.decision`, `policyd.app`, ...):
they stay the same when a module moves to another folder."""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path

import pytest

from policyd.policy.connection import Connection
from policyd.policy.protocol import encode_request
from policyd.policy.server import PolicyServer
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from tests.integration.serverutil import authed, make_config
from tests.unit.policy.test_server_batch import Transport


@pytest.mark.parametrize(
    ("module", "attribute", "name"),
    [
        ("policyd.decision_log", "logger", "policyd.decision"),
        ("policyd.policy.app", "log", "policyd.app"),
        ("policyd.policy.server", "log", "policyd.server"),
        ("policyd.policy.connection", "log", "policyd.server"),
        ("policyd.policy.service", "log", "policyd.service"),
        ("policyd.policy.stdio", "log", "policyd.stdio"),
        ("policyd.policy.actions", "log", "policyd.actions"),
        ("policyd.milter.decide", "log", "policyd.service"),
        ("policyd.runtime", "log", "policyd.runtime"),
        ("policyd.systemd", "log", "policyd.systemd"),
        ("policyd.directory.cache", "log", "policyd.directory.cache"),
        ("policyd.verification.ledger", "log", "policyd.verification"),
        ("policyd.verification.writes", "log", "policyd.verification"),
        ("policyd.verification.admin", "log", "policyd.verification"),
    ],
)
def test_each_module_logs_under_the_name_it_always_had(
    module: str, attribute: str, name: str
) -> None:
    assert getattr(importlib.import_module(module), attribute).name == name


def test_the_milter_logs_under_policyd_milter() -> None:
    pytest.importorskip("Milter", reason="pymilter not installed")
    from policyd.milter import libmilter

    assert libmilter.log.name == "policyd.milter"


def test_the_policy_servers_decision_line_is_logged_on_policyd_decision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyd.decision")
    loop = asyncio.new_event_loop()
    try:
        srv = PolicyServer(PolicyService(build_runtime(make_config(tmp_path))))
        srv.hub.loop = loop
        conn = Connection(srv.hub)
        conn.connection_made(Transport())  # type: ignore[arg-type]
        conn.data_received(encode_request(authed("alice", "alice@example.org")))
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    lines = [r for r in caplog.records if r.getMessage().startswith("decision ")]
    assert [r.name for r in lines] == ["policyd.decision"]
    assert "reason=sender_owned" in lines[0].getMessage()
