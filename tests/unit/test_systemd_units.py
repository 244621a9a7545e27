"""The shipped systemd units, read as files: the policy service's settings, and
systemd/policyd-web.service running `policyd web` as hardened as the policy service.
(`systemd-analyze verify` and the exposure score need the tool: tests/integration/test_ops.py,
test_systemd_units_verify, which covers every unit in systemd/.)"""

from __future__ import annotations

from pathlib import Path

from policyd.core import limits

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"


def unit_keys(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def seconds(span: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "min": 60.0}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if span.endswith(suffix):
            return float(span[: -len(suffix)]) * factor
    return float(span)


def test_systemd_service_settings() -> None:
    svc = unit_keys(UNITS / "policyd.service")
    one = {k: v[-1] for k, v in svc.items()}
    # systemctl reload = SIGHUP, done when policyd answers READY=1; no kill binary needed
    assert one["Type"] == "notify-reload" and "ExecReload" not in one
    assert one.get("ReloadSignal", "SIGHUP") == "SIGHUP"
    assert one["ExecStart"] == "/usr/local/bin/policyd serve --config /etc/policyd/policyd.toml"
    # started together with the socket unit, the service must come up after it
    assert "policyd.socket" in one["Wants"].split() and "policyd.socket" in one["After"].split()
    assert seconds(one["TimeoutStopSec"]) > limits.DEFAULT_DRAIN_TIMEOUT
    assert seconds(one["WatchdogSec"]) > 0
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RuntimeDirectory": "policyd",
    }.items():
        assert one.get(key) == value, key
    assert "@system-service" in svc["SystemCallFilter"]
    assert one.get("DynamicUser") == "yes" or one.get("User")
    assert any(v.startswith("policyd-ldap-bind-password") for v in svc["LoadCredential"])
    sock = unit_keys(UNITS / "policyd.socket")
    assert sock["ListenStream"] == ["127.0.0.1:10040", "/run/policyd/policy.sock"]
    assert sock["FileDescriptorName"]


def test_web_unit_runs_policyd_web_with_the_policy_services_hardening() -> None:
    web = unit_keys(UNITS / "policyd-web.service")
    policy = unit_keys(UNITS / "policyd.service")
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
