"""systemd/policyd-web.service runs `policyd web` as hardened as the policy service.
(`systemd-analyze verify` and the exposure score: test_ops.test_systemd_units_verify, which
covers every unit in systemd/.)"""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_ops import _unit_keys

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "policyd-web.service"


def test_web_unit_runs_policyd_web_with_the_policy_services_hardening() -> None:
    web = _unit_keys(UNIT)
    policy = _unit_keys(REPO / "systemd" / "policyd.service")
    one = {k: v[-1] for k, v in web.items()}
    assert one["ExecStart"] == "/usr/local/bin/policyd web --config /etc/policyd/policyd.toml"
    assert one["Type"] == "notify" and one["User"] == "policyd"
    assert one["StateDirectory"] == "policyd"
    hardening = [
        "NoNewPrivileges", "CapabilityBoundingSet", "ProtectSystem", "ProtectHome",
        "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
        "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
        "ProtectProc", "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
        "RestrictSUIDSGID", "LockPersonality", "SystemCallArchitectures", "SystemCallFilter",
    ]  # fmt: skip
    for key in hardening:
        assert web.get(key) == policy.get(key), key
