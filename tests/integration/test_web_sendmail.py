"""`submission = "sendmail"` under the hardened policyd-web.service (issue 23, section 5).

Postfix's sendmail hands the mail to postdrop, which is set-group-ID postdrop; the unit's
NoNewPrivileges=yes makes the kernel ignore that bit, so every confirmation mail would fail.
`policyd web` refuses to start in that case and names the way that works (submission = "smtp"
with conf/postfix/senders-confirm.cf). The test runs it as an unprivileged user with and
without no_new_privs (util-linux setpriv), as systemd would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.requirements import in_ci, require_binaries
from tests.servers.slapd import REPO, free_port

pytest.importorskip("aiohttp")


def _config(d: Path, submission: str) -> Path:
    cfg = d / "policyd.toml"
    (d / "senders.txt").write_text("alice: alice@example.org\n")
    cfg.write_text(
        f'[directory]\nfile = "{d / "senders.txt"}"\n'
        f'[verification]\nenabled = true\ndatabase = "{d / "v.sqlite"}"\n'
        'link_base_url = "http://127.0.0.1/confirm"\n'
        f'[verification.mail]\nsubmission = "{submission}"\n'
        'from_address = "postmaster@example.org"\n'
        f'[web]\ncookie_secure = false\ndatabase = "{d / "web.sqlite"}"\n'
    )
    return cfg


def _run_as_nobody(cfg: Path, *, no_new_privs: bool) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if no_new_privs:
        cmd.append("--no-new-privs")
    cmd += [sys.executable, "-m", "policyd", "web", "--config", str(cfg)]
    cmd += ["--listen", f"127.0.0.1:{free_port()}"]
    # (no READY: it either exits at once or serves until the timeout)
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=8,
            cwd=cfg.parent,
            env={**os.environ, "PYTHONPATH": str(REPO), "POLICYD_NO_UVLOOP": "1"},
        )
    except subprocess.TimeoutExpired as e:
        out = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return subprocess.CompletedProcess(cmd, -1, "", out)


@pytest.fixture
def workdir() -> Iterator[Path]:
    require_binaries("setpriv", why="util-linux setpriv runs the page as another user")
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("needs root to switch to nobody [CI=true: a missing tier is a failure]")
        pytest.skip("needs root to switch to nobody")
    probe = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
         "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); import policyd.web.server"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this checkout's python: {probe.stderr[-300:]!r}")
    d = Path(tempfile.mkdtemp(prefix="policyd-web-sendmail-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_sendmail_under_no_new_privs_refuses_to_start_and_names_smtp(workdir: Path) -> None:
    r = _run_as_nobody(_config(workdir, "sendmail"), no_new_privs=True)
    assert r.returncode == 1, r
    assert 'submission = "sendmail" cannot work here' in r.stderr
    assert "no_new_privs" in r.stderr and 'use submission = "smtp"' in r.stderr


def test_without_no_new_privs_or_with_smtp_it_starts(workdir: Path) -> None:
    # the same user without the flag (postdrop's set-group-ID works there) ...
    r = _run_as_nobody(_config(workdir, "sendmail"), no_new_privs=False)
    assert r.returncode == -1 and "listening on" in r.stderr, r
    # ... and smtp under the flag: the shipped default
    r = _run_as_nobody(_config(workdir, "smtp"), no_new_privs=True)
    assert r.returncode == -1 and "listening on" in r.stderr, r
