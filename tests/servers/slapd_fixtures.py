"""pytest fixtures for a private slapd (registered via pytest_plugins in tests/conftest.py).

- `slapd_pki`     (session)  test CA, server cert (SAN IP:127.0.0.1, DNS:localhost), wrong CA.
- `slapd`         (module)   a shared TLS-enabled slapd loaded with tests/data/directory.ldif.
                             Read-only use: do NOT kill, freeze or modify it.
- `slapd_factory` (function) make private instances for fault tests:
                                 s = slapd_factory()                 # started, TLS, test data
                                 s = slapd_factory(ldif=EXAMPLE_LDIF, tls=False, start=False)
                                 r = slapd_factory.replica(s)        # copy of s's data
                             every instance is stopped (by PID) at teardown, pass or fail.
- `fresh_slapd`   (function) shorthand for slapd_factory().

Every fixture first calls require_binaries: skip on a laptop without slapd, fail under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.requirements import require_binaries
from tests.servers.slapd import DIRECTORY_LDIF, REQUIRED_BINARIES, Pki, Slapd, binary, make_pki

WHY = "LDAP integration tests need OpenLDAP's slapd (Debian: apt-get install slapd ldap-utils)"


def _require() -> None:
    require_binaries(*(binary(n) for n in REQUIRED_BINARIES), why=WHY)


@pytest.fixture(scope="session")
def slapd_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    _require()
    return make_pki(tmp_path_factory.mktemp("slapd-pki"))


@pytest.fixture(scope="module")
def slapd(slapd_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    _require()
    server = Slapd(tmp_path_factory.mktemp("slapd"), pki=slapd_pki)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class SlapdFactory:
    def __init__(self, base: Path, pki: Pki) -> None:
        self.base = base
        self.pki = pki
        self.made: list[Slapd] = []

    def __call__(
        self,
        *,
        ldif: Path | None = DIRECTORY_LDIF,
        tls: bool = True,
        start: bool = True,
        **kwargs: Any,
    ) -> Slapd:
        server = Slapd(
            self.base / f"slapd{len(self.made)}",
            ldif=ldif,
            pki=self.pki if tls else None,
            **kwargs,
        )
        self.made.append(server)
        if start:
            server.start()
        return server

    def replica(self, primary: Slapd, *, start: bool = True) -> Slapd:
        server = primary.replica(self.base / f"replica{len(self.made)}", start=False)
        self.made.append(server)
        if start:
            server.start()
        return server

    def stop_all(self) -> None:
        for server in self.made:
            server.stop()


@pytest.fixture
def slapd_factory(slapd_pki: Pki, tmp_path: Path) -> Iterator[SlapdFactory]:
    _require()
    factory = SlapdFactory(tmp_path, slapd_pki)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def fresh_slapd(slapd_factory: SlapdFactory) -> Slapd:
    return slapd_factory()
