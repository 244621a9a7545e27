"""setup.py refuses a setuptools too old for pyproject.toml with a message that says what to do
(Debian 12's setuptools 65 otherwise fails with a cryptic project.license error)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if not (
    REPO / "setup.py"
).is_file():  # (tests/debian runs tests/unit against the installed package)
    pytest.skip("not a whole checkout: no setup.py", allow_module_level=True)


def run_setup_with(tmp_path: Path, version: str) -> subprocess.CompletedProcess[str]:
    # a setuptools of that version, first on the path; setup() only records that it ran
    fake = tmp_path / "setuptools"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        f"__version__ = {version!r}\ndef setup(**kw):\n    print('setup() called')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("POLICYD_COMPILE", None)
    return subprocess.run(
        [sys.executable, str(REPO / "setup.py"), "--version"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setuptools_65_gets_a_clear_message_naming_the_version_and_the_fix(
    tmp_path: Path,
) -> None:
    r = run_setup_with(tmp_path, "65.5.0")
    assert r.returncode == 1
    assert "setup() called" not in r.stdout
    assert "policyd needs setuptools>=77 to build; this Python has setuptools 65.5.0" in r.stderr
    assert "pip install 'setuptools>=77' wheel" in r.stderr


@pytest.mark.parametrize("version", ["77.0.3", "78.1.1", "80.9.0"])
def test_setuptools_77_and_later_build(tmp_path: Path, version: str) -> None:
    r = run_setup_with(tmp_path, version)
    assert r.returncode == 0, r.stderr
    assert "setup() called" in r.stdout


def test_pyproject_and_readme_name_the_same_minimum() -> None:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    assert "setuptools>=77" in requires
    assert "setuptools>=77" in (REPO / "README.md").read_text()
