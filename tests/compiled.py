"""For the compiled run of the suite (scripts/test-compiled sets POLICYD_EXPECT_COMPILED=1)."""

from __future__ import annotations

import os

import pytest

COMPILED = os.environ.get("POLICYD_EXPECT_COMPILED") == "1"

#: A test that injects a fault by replacing a method of a policyd class. A compiled (mypyc)
#: class's methods are fixed when it is built, so the fault cannot be injected there; the code
#: that handles the fault is the same source and is tested in the pure run.
replaces_methods = pytest.mark.skipif(
    COMPILED, reason="replaces a method of a class that is compiled in this run"
)
