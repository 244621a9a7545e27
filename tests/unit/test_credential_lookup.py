"""policyd.credentials: a credential found as systemd finds it (issue 27 item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd import credentials
from policyd.credentials import CredentialError, read_credential


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    d = {n: tmp_path / n for n in ("unit", "etc", "run", "usr", "etc.enc", "run.enc", "usr.enc")}
    for p in d.values():
        p.mkdir()
    monkeypatch.setattr(credentials, "CREDSTORE_DIRS", (d["etc"], d["run"], d["usr"]))
    monkeypatch.setattr(
        credentials, "CREDSTORE_ENCRYPTED_DIRS", (d["etc.enc"], d["run.enc"], d["usr.enc"])
    )
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return d


def test_search_order(stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    (stores["usr"] / "pw").write_text("usr")
    assert read_credential("pw") == b"usr"
    (stores["run"] / "pw").write_text("run")
    assert read_credential("pw") == b"run"
    (stores["etc"] / "pw").write_text("etc")
    assert read_credential("pw") == b"etc"
    # under the unit, $CREDENTIALS_DIRECTORY comes first ...
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(stores["unit"]))
    (stores["unit"] / "pw").write_text("unit")
    assert read_credential("pw") == b"unit"
    # ... and a credential the unit did not get is still looked for in the stores
    (stores["unit"] / "pw").unlink()
    assert read_credential("pw") == b"etc"


def test_missing_names_every_place(stores: dict[str, Path]) -> None:
    with pytest.raises(CredentialError) as ei:
        read_credential("pw")
    msg = str(ei.value)
    assert "$CREDENTIALS_DIRECTORY (not set)" in msg
    for p in stores.values():
        if p.name != "unit":
            assert str(p) in msg


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x" * 256])
def test_bad_names(stores: dict[str, Path], bad: str) -> None:
    with pytest.raises(CredentialError, match="not a credential name"):
        read_credential(bad)


def test_unreadable_is_an_error_not_a_fallthrough(stores: dict[str, Path]) -> None:
    (stores["etc"] / "pw").mkdir()  # exists but cannot be read as a file
    (stores["run"] / "pw").write_text("run")
    with pytest.raises(CredentialError, match="cannot read"):
        read_credential("pw")


def test_encrypted_without_systemd_creds(
    stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (stores["run.enc"] / "pw").write_bytes(b"not plain")
    monkeypatch.setenv("PATH", str(stores["unit"]))  # no systemd-creds on this PATH
    with pytest.raises(CredentialError, match="systemd-creds is not installed"):
        read_credential("pw")
