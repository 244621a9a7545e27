"""pytest fixtures for a private Postfix and a `policyd serve` subprocess (registered via
pytest_plugins in tests/conftest.py).

- `policyd_process` (module)  a PolicydProcess on a free port, NOT started: the test module
                              writes its data files into `.workdir` and calls
                              `.start(config_text)`; `.restart(...)`, `.stop()` as needed.
                              Stopped (by PID) at teardown.
- `postfix`         (module)  a started PostfixServer built from conf/postfix/, asking
                              policyd_process's port. Ports in `postfix.ports`: "submission",
                              "mx", "submission-realm". Stopped (by PID) at teardown; its
                              directory (under /tmp) is removed unless
                              POLICYD_KEEP_POSTFIX_DIR=1.

Both first call require_binaries: skip on a laptop without Postfix and Cyrus SASL, fail under
CI=true.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.postfix import PolicydProcess, PostfixServer, free_port
from tests.servers.requirements import require_binaries

WHY = (
    "Postfix system tests need Postfix, Cyrus SASL and openssl "
    "(Debian: apt-get install postfix sasl2-bin libsasl2-modules openssl)"
)


def require_postfix() -> None:
    require_binaries("postfix", "saslpasswd2", "openssl", why=WHY)


@pytest.fixture(scope="module")
def policyd_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicydProcess]:
    require_postfix()
    proc = PolicydProcess(tmp_path_factory.mktemp("policyd"), free_port())
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def postfix(policyd_process: PolicydProcess) -> Iterator[PostfixServer]:
    require_postfix()
    # Not tmp_path_factory: Postfix's own user must reach the files, and pytest re-chmods its
    # base temp dir to 0700 whenever any pytest session starts (see PostfixServer.write_config).
    workdir = Path(tempfile.mkdtemp(prefix="policyd-postfix-"))
    server = PostfixServer(workdir, policyd_process.port)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if os.environ.get("POLICYD_KEEP_POSTFIX_DIR", "") in ("", "0"):
            shutil.rmtree(workdir, ignore_errors=True)
