"""systemd/policyd-web.service: `systemd-analyze verify` passes without a warning, its
hardening exposure stays low, and it runs `policyd web` as hardened as the policy service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.integration.test_ops import _unit_keys
from tests.servers.requirements import require_binaries

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "policyd-web.service"


def _root(tmp_path: Path) -> Path:
    """A throwaway root holding what the unit references (as test_ops does for the others)."""
    root = tmp_path / "root"
    sys_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    assert sys_units is not None, "no system unit directory"
    shutil.copytree(sys_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/local/bin").mkdir(parents=True)
    fake = root / "usr/local/bin/policyd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    shutil.copy2(UNIT, etc / UNIT.name)
    return root


def test_web_unit_verifies_without_warnings_and_its_exposure_is_low(tmp_path: Path) -> None:
    require_binaries("systemd-analyze", why="unit file verification")
    root = _root(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    )
    sec = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--root={root}",
            "--threshold=25",
            "--no-pager",
            UNIT.name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sec.returncode == 0, f"exposure over 2.5:\n{sec.stdout}\n{sec.stderr}"


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
