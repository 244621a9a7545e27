"""Issue 29: a TCP milter socket stalls every message (libmilter sets no TCP_NODELAY and
pymilter gives no access to the accepted sockets): config-check and the start say so loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.cli import main
from policyd.milter import listen_warning


def write_config(tmp_path: Path, listen: str) -> Path:
    (tmp_path / "senders.txt").write_text("alice: alice@example.org\n", encoding="utf-8")
    path = tmp_path / "p.toml"
    path.write_text(
        '[networks]\nfiles = []\n[directory]\nbackend = "file"\nfile = "senders.txt"\n'
        f'[milter]\nlisten = "{listen}"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("listen", ["inet:10041@127.0.0.1", "inet6:10041@[::1]", "inet:10041"])
def test_config_check_warns_about_a_tcp_milter_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    assert main(["config-check", "--config", str(write_config(tmp_path, listen))]) == 0
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("WARNING:")]
    assert f"milter.listen {listen} is TCP" in line and "TCP_NODELAY" in line
    assert "use a unix socket" in line


def test_config_check_is_quiet_for_a_unix_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "unix:/var/spool/postfix/policyd/milter.sock")
    assert main(["config-check", "--config", str(path)]) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert listen_warning("local:/run/m.sock") is None


def test_milter_start_logs_the_warning(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("Milter")
    from policyd.milter.libmilter import MilterApp

    app = MilterApp(write_config(tmp_path, "inet:10041@127.0.0.1"))
    app.load()
    try:
        app.ready()
    finally:
        app.stop()
    # (load() set up policyd's logging: to stderr by default)
    [line] = [x for x in capfd.readouterr().err.splitlines() if "is TCP" in x]
    assert line.startswith("WARNING policyd.milter: milter.listen inet:10041@127.0.0.1 is TCP")
    assert "use a unix socket" in line
