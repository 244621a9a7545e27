"""The installed program (a plain, non-editable `pip install`) finds its config: /etc/policyd,
$POLICYD_CONFIG or --config — never a path inside site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with policyd installed from a copy of the source tree (no --editable);
    its dependencies, and the build backend (no build isolation: no download), come from the
    test environment's site-packages through a .pth file."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", ".pybuild"),
    )
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The build backend is the test environment's (the venv's own old setuptools, which
    # Python 3.11's venv bundles, would shadow it)
    subprocess.run(
        [str(py), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], capture_output=True
    )
    sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    Path(purelib, "test-deps.pth").write_text("\n".join(sites) + "\n")
    r = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert not Path(purelib, "conf").exists()
    return venv / "bin" / "policyd"


def run(policyd: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "POLICYD_CONFIG"}
    return subprocess.run(
        [str(policyd), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, **env},
    )


@pytest.mark.skipif(Path("/etc/policyd/policyd.toml").exists(), reason="/etc/policyd exists")
def test_without_a_config_it_says_where_it_looked_and_how_to_start(
    installed: Path, tmp_path: Path
) -> None:
    r = run(installed, tmp_path, "config-check")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "policyd: no config file at /etc/policyd/policyd.toml (set --config or "
        "$POLICYD_CONFIG); to start from the shipped example: --config conf/policyd.toml"
    )
    assert "site-packages" not in r.stderr


def test_POLICYD_CONFIG_and_config_name_the_file(installed: Path, tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    shutil.copytree(ROOT / "conf", conf)
    r = run(installed, tmp_path, "config-check", POLICYD_CONFIG=str(conf / "policyd.toml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"config {conf / 'policyd.toml'}: OK")
    r = run(installed, tmp_path, "config-check", "--config", str(conf / "policyd.toml"))
    assert r.returncode == 0, r.stderr
