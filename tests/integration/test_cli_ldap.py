"""`policyd check` and `policyd config-check --connect` with the LDAP backend, real slapd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.slapd import Slapd

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slapd, pytest.mark.timeout(60)]


def policyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policyd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def write_config(tmp_path: Path, server: Slapd, password: str) -> Path:
    pw = tmp_path / "pw"
    pw.write_text(password + "\n")
    p = tmp_path / "policyd.toml"
    p.write_text(
        '[directory]\nbackend = "ldap"\n'
        f'[ldap]\nservers = ["{server.url}"]\nbind_dn = "{server.bind_dn}"\n'
        f'bind_password_file = "{pw}"\nuser_base = "ou=people,dc=example,dc=org"\n'
        "connect_timeout = 1\nreceive_timeout = 1\n"
    )
    return p


def test_check_and_config_check_with_ldap(slapd: Slapd, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, slapd, slapd.bind_password)
    r = policyd(
        "check",
        "-c",
        str(cfg),
        "--client-address",
        "203.0.113.9",
        "--sasl-username",
        "alice",
        "--sender",
        "sales@example.org",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "action=OK"
    assert any(
        line.startswith("login alice: owns ") and "sales@example.org" in line for line in lines
    )
    r = policyd("config-check", "-c", str(cfg), "--connect")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "directory: ldap" in r.stdout
    assert "bind: ok" in r.stdout


def test_config_check_connect_names_the_failed_step(slapd: Slapd, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, slapd, "wrong-password")
    r = policyd("config-check", "-c", str(cfg), "--connect")
    assert r.returncode == 1
    assert "bind: FAILED" in r.stdout and "invalidCredentials" in r.stdout
    assert "wrong-password" not in r.stdout + r.stderr
    r = policyd(
        "check",
        "-c",
        str(cfg),
        "--client-address",
        "203.0.113.9",
        "--sasl-username",
        "alice",
        "--sender",
        "alice@example.org",
    )
    assert (
        r.stdout.splitlines()[0]
        == "action=451 4.3.0 Temporary lookup failure, please try again later"
    )
