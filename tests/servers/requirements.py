"""Skip-or-fail for tiers that need real servers: skip on a laptop, fail under CI=true."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binaries(*names: str, why: str) -> None:
    """Skip (or, under CI=true, fail) when one of the binaries is not installed."""
    missing = [n for n in names if shutil.which(n) is None and not os.path.exists(n)]
    if not missing:
        return
    msg = f"{why}: missing {', '.join(missing)} (install with ./scripts/test)"
    if in_ci():
        pytest.fail(msg + " [CI=true: a missing tier is a failure]")
    pytest.skip(msg)
