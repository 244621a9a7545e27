"""The policyd command, run as a subprocess the way an admin runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def policyd(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policyd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "senders.txt").write_text(
        "alice: alice@example.org, @alice.example\nalice, bob: sales@example.org\n"
    )
    (tmp_path / "ranges.txt").write_text(
        "192.0.2.0/24 office\n198.51.100.0/24 shop domains=shop.example\n"
    )
    p = tmp_path / "policyd.toml"
    p.write_text(
        '[networks]\nfiles = ["ranges.txt"]\n[directory]\nfile = "senders.txt"\n'
        '[addresses]\nrealms = ["example.org"]\n'
    )
    return p


def test_version() -> None:
    r = policyd("--version")
    assert r.returncode == 0 and r.stdout.startswith("policyd ")


def test_check_owned_sender_explains_facts(config: Path) -> None:
    r = policyd(
        "check",
        "-c",
        str(config),
        "--client-address",
        "203.0.113.9",
        "--sasl-username",
        "Alice@Example.org",
        "--sender",
        "ALICE+x@example.org",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "action=OK"
    assert "reason=sender_owned" in lines
    assert any(line.startswith("login alice: owns ") and "@alice.example" in line for line in lines)
    assert any("in no allocated range" in line for line in lines)


def test_check_foreign_sender_prints_the_reject(config: Path) -> None:
    r = policyd(
        "check",
        "-c",
        str(config),
        "--client-address",
        "203.0.113.9",
        "--sasl-username",
        "bob",
        "--sender",
        "alice@example.org",
    )
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == (
        "action=553 5.7.1 Sender address <alice@example.org> is not owned by user bob"
    )
    assert "reason=sender_not_owned" in r.stdout


def test_check_allocated_range_and_domain_restriction(config: Path) -> None:
    r = policyd(
        "check", "-c", str(config), "--client-address", "192.0.2.10", "--sender", "x@any.example"
    )
    assert r.stdout.splitlines()[0] == "action=OK"
    assert "in range office" in r.stdout
    r = policyd(
        "check", "-c", str(config), "--client-address", "198.51.100.7", "--sender", "x@any.example"
    )
    assert r.stdout.splitlines()[0] == (
        "action=553 5.7.1 Sender address <x@any.example> is not allowed from network shop"
    )


def test_check_unauthenticated_outside_ranges_per_profile(config: Path) -> None:
    r = policyd(
        "check", "-c", str(config), "--client-address", "203.0.113.9", "--sender", "x@y.example"
    )
    assert r.stdout.splitlines()[0].startswith("action=554 5.7.1 Relay access denied: 203.0.113.9")
    assert "enable SMTP authentication" in r.stdout
    r = policyd(
        "check",
        "-c",
        str(config),
        "--client-address",
        "203.0.113.9",
        "--sender",
        "x@y.example",
        "--policy-context",
        "mx",
    )
    assert r.stdout.splitlines()[:2] == ["action=DUNNO", "reason=not_trusted"]


def test_check_with_the_shipped_example_named_by_POLICYD_CONFIG() -> None:
    r = policyd(
        "check",
        "--client-address",
        "203.0.113.9",
        "--sasl-username",
        "alice",
        "--sender",
        "sales@example.org",
        env={"POLICYD_CONFIG": str(ROOT / "conf" / "policyd.toml")},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "action=OK"


def test_config_check_summarises(config: Path) -> None:
    r = policyd("config-check", "-c", str(config))
    assert r.returncode == 0, r.stderr
    assert f"config {config}: OK" in r.stdout
    assert "ranges: 2 ranges" in r.stdout
    assert "directory: file" in r.stdout and "2 logins" in r.stdout
    assert "profile submission (default): role submission" in r.stdout
    assert (
        "milter: listen unix:/run/policyd-milter/milter.sock, profile submission (mode "
        "enforce), timeout 60s" in r.stdout
    )


def test_config_check_and_serve_fail_with_one_line_naming_file_and_key(config: Path) -> None:
    config.write_text(config.read_text() + "[server]\nmax_conections = 5\n")
    for cmd in ("config-check", "serve"):
        r = policyd(cmd, "-c", str(config))
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            f"policyd: {config}: server.max_conections: unknown key (known keys here: "
            "drain_timeout, idle_timeout, listen, max_connections, unix_socket_mode, workers)"
        ]


def test_bad_range_line_is_a_startup_error_with_file_and_line(config: Path) -> None:
    (config.parent / "ranges.txt").write_text("192.0.2.0/24\n10.1.2.3/8 oops\n")
    r = policyd("config-check", "-c", str(config))
    assert r.returncode == 1
    assert f"{config.parent / 'ranges.txt'}:2:" in r.stderr


def test_bad_directory_line_is_a_startup_error_with_file_and_line(config: Path) -> None:
    (config.parent / "senders.txt").write_text("alice: alice@example.org\nbob bob@example.org\n")
    r = policyd("serve", "-c", str(config), "--listen", "127.0.0.1:0")
    assert r.returncode == 1
    assert f"{config.parent / 'senders.txt'}:2:" in r.stderr


def test_serve_bad_listen_argument(config: Path) -> None:
    r = policyd("serve", "-c", str(config), "--listen", "nowhere")
    assert r.returncode == 1 and "--listen" in r.stderr


def test_milter_bad_config_fails_with_one_line(config: Path) -> None:
    config.write_text(config.read_text() + '[milter]\nlisten = "tcp:1"\n')
    r = policyd("milter", "-c", str(config))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"policyd: {config}: milter.listen: must be inet:PORT@HOST, inet6:PORT@HOST or unix:/PATH"
    ]


def test_readme_check_example_is_what_the_command_prints() -> None:
    import shlex

    text = (ROOT / "README.md").read_text()
    block = text[text.index("$ policyd check ") :]
    block = block[: block.index("```")]
    command, *expected = block.strip().splitlines()
    r = policyd(*shlex.split(command)[2:])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == expected


def test_a_range_wider_than_a_slash_8_is_warned_about(config: Path) -> None:
    (config.parent / "ranges.txt").write_text("0.0.0.0/0 everyone\n")
    r = policyd("config-check", "-c", str(config))
    assert r.returncode == 0
    assert "allocated range 0.0.0.0/0" in r.stderr and "ranges.txt:1" in r.stderr


def test_check_explains_the_milter_decision_for_a_header(config: Path) -> None:
    r = policyd(
        "check",
        "-c",
        str(config),
        "--sasl-username",
        "alice",
        "--header-from",
        '"ceo@example.org" <alice@example.org>',
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (
        "milter_action=550 5.7.1 Header From shows <ceo@example.org> in a display name or "
        "comment; it is not owned by user alice"
    )
    assert lines[1] == "milter_reason=header_from_display_address"
    r = policyd(
        "check",
        "-c",
        str(config),
        "--sasl-username",
        "alice",
        "--sender",
        "alice@example.org",
        "--header-from",
        "alice@example.org",
        "--header-sender",
        "bob@example.org",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:2] == ["action=OK", "reason=sender_owned"]
    assert (
        "milter_action=550 5.7.1 Header Sender <bob@example.org> is not owned by user alice" in out
    )


def test_check_into_a_closed_pipe_exits_quietly(config: Path) -> None:
    # `policyd check … | head -1`: the reader is gone before we write. No BrokenPipeError
    # traceback: the process ends saying nothing, with the status a shell gives SIGPIPE.
    rfd, wfd = os.pipe()
    os.close(rfd)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "policyd", "check", "-c", str(config)]
            + ["--sasl-username", "alice", "--sender", "alice@example.org"],
            stdout=wfd,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    finally:
        os.close(wfd)
    assert r.stderr == "", r.stderr
    assert r.returncode == 128 + signal.SIGPIPE


def test_a_missing_default_config_says_where_it_looked_and_how_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    r = policyd("config-check", env={"POLICYD_CONFIG": str(missing)})
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"policyd: no config file at {missing} (set the path); "
        "to start from the shipped example: --config conf/policyd.toml"
    )


def test_web_setup_errors_are_one_line_from_the_cli(config: Path) -> None:
    r = policyd("web", "-c", str(config), "--listen", "unix:/run/x.sock")
    assert r.returncode == 1
    assert r.stderr.strip() == f"policyd: {config}: web.listen: must be HOST:PORT"
