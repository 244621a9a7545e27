"""`policyd check` and `policyd config-check --connect` with the LDAP backend, real slapd."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.policyd_proc import run_cli as policyd
from tests.servers.requirements import in_ci
from tests.servers.slapd import Slapd

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slapd, pytest.mark.timeout(60)]


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


# ---------------------------------------------------------------------------------------------
# Credentials outside systemd (issue 27 item 4): the config the unit uses, run from a root shell


def credential_config(tmp_path: Path, server: Slapd, name: str) -> Path:
    p = tmp_path / "policyd.toml"
    p.write_text(
        '[directory]\nbackend = "ldap"\n'
        f'[ldap]\nservers = ["{server.url}"]\nbind_dn = "{server.bind_dn}"\n'
        f'bind_password_credential = "{name}"\nuser_base = "ou=people,dc=example,dc=org"\n'
        "connect_timeout = 1\nreceive_timeout = 1\n"
    )
    return p


def shell_env() -> dict[str, str]:
    """A root shell's environment: no $CREDENTIALS_DIRECTORY."""
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return env


def test_config_check_without_connect_needs_no_password(slapd: Slapd, tmp_path: Path) -> None:
    # a credential that exists nowhere: config-check (no --connect) validates the config anyway;
    # on the old code it failed with "$CREDENTIALS_DIRECTORY is not set"
    name = f"policyd-test-absent-{os.getpid()}"
    cfg = credential_config(tmp_path, slapd, name)
    r = subprocess.run(
        [sys.executable, "-m", "policyd", "config-check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=shell_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "directory: ldap" in r.stdout
    # --connect does need it, and says where it looked
    r = subprocess.run(
        [sys.executable, "-m", "policyd", "config-check", "-c", str(cfg), "--connect"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=shell_env(),
    )
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert f"credential {name!r} not found" in out and "/etc/credstore" in out, out


def in_private_run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a mount namespace of its own with an empty tmpfs on /run, so that
    it can fill /run/credstore[.encrypted] without touching the host's."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        msg = "needs root and unshare (a private mount namespace)"
        if in_ci():
            pytest.fail(msg + " [CI=true]")
        pytest.skip(msg)
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            "mount -t tmpfs policyd-test /run\n" + script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


CHECK = (
    f"{shlex.quote(sys.executable)} -m policyd check -c {{cfg}} --client-address 203.0.113.9 "
    "--sasl-username alice --sender sales@example.org\n"
    f"{shlex.quote(sys.executable)} -m policyd config-check -c {{cfg}} --connect\n"
)


@pytest.mark.netns
def test_check_finds_the_credential_in_run_credstore(slapd: Slapd, tmp_path: Path) -> None:
    name = "policyd-ldap-bind-password"
    cfg = credential_config(tmp_path, slapd, name)
    pw = tmp_path / "pw"
    pw.write_text(slapd.bind_password + "\n")
    r = in_private_run(
        f"mkdir -m 0700 /run/credstore\ncp {pw} /run/credstore/{name}\n"
        + CHECK.format(cfg=shlex.quote(str(cfg))),
        shell_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "action=OK", r.stdout
    assert "bind: ok" in r.stdout
    assert slapd.bind_password not in r.stdout + r.stderr


@pytest.mark.netns
def test_check_decrypts_an_encrypted_credential(slapd: Slapd, tmp_path: Path) -> None:
    if shutil.which("systemd-creds") is None:
        msg = "needs systemd-creds (package systemd)"
        if in_ci():
            pytest.fail(msg + " [CI=true]")
        pytest.skip(msg)
    name = "policyd-ldap-bind-password"
    cfg = credential_config(tmp_path, slapd, name)
    pw = tmp_path / "pw"
    pw.write_text(slapd.bind_password + "\n")
    # the host key in a file of the test's own, not /var/lib/systemd/credential.secret
    env = shell_env() | {"SYSTEMD_CREDENTIAL_SECRET": str(tmp_path / "credential.secret")}
    r = in_private_run(
        "mkdir -m 0700 /run/credstore.encrypted\n"
        f"systemd-creds encrypt --with-key=host --name={name} {pw} "
        f"/run/credstore.encrypted/{name}\n"
        f"! grep -q {shlex.quote(slapd.bind_password)} /run/credstore.encrypted/{name}\n"
        + CHECK.format(cfg=shlex.quote(str(cfg))),
        env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "action=OK", r.stdout
    assert "bind: ok" in r.stdout
