"""`policyd --version` names the build, as a subprocess sees it: in the compiled run
(POLICYD_EXPECT_COMPILED=1) a `python -m policyd` must load the compiled modules too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from policyd import __version__
from policyd.build import COMPILED_MODULES

ROOT = Path(__file__).resolve().parents[2]


def test_version_says_which_build_runs() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "policyd", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    if os.environ.get("POLICYD_EXPECT_COMPILED") == "1":
        build = f"compiled with mypyc: {len(COMPILED_MODULES)} modules"
    else:
        build = "pure Python"
    assert (r.returncode, r.stdout) == (0, f"policyd {__version__} ({build})\n")
