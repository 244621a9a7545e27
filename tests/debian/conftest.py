"""Fixtures of the `debian` tier: the packages built once per session, and one booted trixie
container per test module (a fresh overlay of the cached rootfs), stopped and unmounted in a
finally whatever happens. Skips without root/systemd-nspawn/debootstrap; fails under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.debian.container import REPO, Container, rootfs
from tests.servers.requirements import in_ci, require_binaries

WHY = "the debian tier boots a trixie container (run as root; ./scripts/bootstrap installs them)"


def require_container_tools() -> None:
    require_binaries("systemd-nspawn", "debootstrap", "nsenter", why=WHY)
    if os.geteuid() != 0:
        msg = f"{WHY}: not root"
        if in_ci():
            pytest.fail(msg + " [CI=true: a missing tier is a failure]")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def debs() -> list[Path]:
    """dist/policyd_<v>_<arch>.deb (compiled) and dist/policyd-milter_<v>_all.deb, built now
    from this checkout by ./scripts/build-deb (its own unit-test run skipped: the tier runs the unit
    tests inside the container against the installed package)."""
    require_container_tools()
    env = {**os.environ, "DEB_BUILD_OPTIONS": "nocheck"}
    r = subprocess.run(
        [str(REPO / "scripts/build-deb")], capture_output=True, text=True, timeout=1200, env=env
    )
    assert r.returncode == 0, f"build-deb failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    version = subprocess.run(
        ["dpkg-parsechangelog", "-l", str(REPO / "debian/changelog"), "-S", "Version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = [
        REPO / f"dist/policyd_{version}_{arch}.deb",
        REPO / f"dist/policyd-milter_{version}_all.deb",
    ]
    assert all(p.exists() for p in out), out
    return out


def _copy_sources(dest: Path) -> None:
    """What the unit tests read, without the policyd/ package (they must import the
    installed one)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("tests", "conf", "systemd", "docs"):
        shutil.copytree(REPO / d, dest / d, ignore=ignore)
    for f in ("README.md", "pyproject.toml"):
        shutil.copy2(REPO / f, dest / f)


@pytest.fixture(scope="module")
def trixie(debs: list[Path]) -> Iterator[Container]:
    """A booted trixie with the packages and Postfix downloaded (not installed) and the
    test files in /out. Private network: loopback only."""
    require_container_tools()
    c = Container(rootfs("boot"))
    try:
        c.mount()
        for deb in debs:
            shutil.copy2(deb, c.out / deb.name)
        shutil.copy2(Path(__file__).parent / "client.py", c.out / "client.py")
        _copy_sources(c.out / "src")
        names = " ".join(f"/out/{d.name}" for d in debs)
        r = c.prefetch(
            "echo 'postfix postfix/main_mailer_type select Local only\n"
            "postfix postfix/mailname string mail.test' | debconf-set-selections\n"
            f"apt-get -q install --download-only -y {names} postfix sasl2-bin libsasl2-modules"
        )
        assert r.returncode == 0, f"prefetch failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        c.boot()
        yield c
    finally:
        c.stop()
