"""lintian on the three packages scripts/build-deb made: no error, no warning (what is accepted
is overridden in debian/*.lintian-overrides, with the reason). Debian 13's lintian, from the
build rootfs (./scripts/trixie-rootfs build), not the host's: the packages are for trixie."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.debian.conftest import require_container_tools
from tests.debian.container import rootfs

pytestmark = [pytest.mark.debian, pytest.mark.timeout(900)]


def test_lintian_reports_no_error_or_warning_on_the_three_packages(debs: list[Path]) -> None:
    require_container_tools()
    dist = debs[0].parent
    version = debs[0].name.split("_")[1]
    names = [debs[0].name, debs[1].name, f"policyd-web_{version}_all.deb"]
    assert not debs[0].name.endswith("_all.deb"), debs[0]  # (policyd: Architecture any)
    for name in names:
        assert (dist / name).exists(), name
    r = subprocess.run(
        [
            "systemd-nspawn", "-q", "-D", str(rootfs("build")), "--register=no", "--keep-unit",
            "--as-pid2", "--volatile=overlay", f"--bind-ro={dist}:/dist",
            "--setenv=PATH=/usr/sbin:/usr/bin:/sbin:/bin", "--setenv=LANG=C.UTF-8",
            "lintian", "--color", "never", "--tag-display-limit", "0", "--info", "--show-overrides",
            *(f"/dist/{n}" for n in names),
        ],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    tags = [line for line in r.stdout.splitlines() if line[:3] in ("E: ", "W: ")]
    assert not tags, r.stdout[-3000:]
    # it did look at them: the compiled build's accepted tag shows as overridden
    assert "O: policyd: shared-library-lacks-prerequisites" in r.stdout, r.stdout[-3000:]
