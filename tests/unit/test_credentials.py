"""policyd.credentials: the one reader of a password file or systemd credential, used by the LDAP
bind (directory/ldap) and the verification writer's bind (verification/ldap_writer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.config import LdapConfig
from policyd.config.verification import VerificationLdapConfig
from policyd.credentials import CredentialError, read_password
from policyd.directory.base import DirectoryError
from policyd.directory.ldap import read_bind_password
from policyd.verification.writes import WriterError

SECRET = "s3cr3t pass"


def read(file: Path | None, credential: str = "") -> str:
    return read_password(file, credential, "x.password")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"s3cr3t pass\n", SECRET),
        (b"s3cr3t pass\r\n", SECRET),
        (b"s3cr3t pass", SECRET),
        (b"s3cr3t pass\n\n", SECRET + "\n"),  # one newline only
        (b"s3cr3t pass\r", SECRET + "\r"),  # a CR alone is part of the password
        (b" s3cr3t pass \n", " " + SECRET + " "),  # spaces are the password's
    ],
)
def test_one_trailing_newline_is_stripped(tmp_path: Path, content: bytes, expected: str) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    assert read(f) == expected


def test_the_file_wins_over_the_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "cred").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read(tmp_path / "pw", "cred") == "from-file"
    assert read(None, "cred") == "from-credential"


def test_a_credential_without_credentials_directory_names_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    name = "policyd-test-no-such-credential"
    with pytest.raises(
        CredentialError,
        match=rf"^x\.password_credential: credential '{name}' not found in \$CREDENTIALS_DIRECTORY "
        r"\(not set\), /etc/credstore",
    ):
        read(None, name)


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "cannot read"), (b"\n", "is empty"), (b"", "is empty"), (b"\xff\xfe\n", "not UTF-8")],
)
def test_a_bad_file_names_key_and_path_never_the_content(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    f = tmp_path / "pw"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(CredentialError) as e:
        read(f)
    assert str(e.value).startswith("x.password_file: ") and why in str(e.value)
    assert str(f) in str(e.value)


def test_both_binds_read_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policyd.verification.ldap_writer import writer_password

    (tmp_path / "bind").write_bytes(b"bind pw\r\n")
    (tmp_path / "writer").write_bytes(b"writer pw\r\n")
    bind = LdapConfig(bind_dn="cn=policyd", bind_password_file=tmp_path / "bind")
    assert read_bind_password(bind) == "bind pw"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    writer = VerificationLdapConfig(writer_password_credential="writer")
    assert writer_password(writer) == "writer pw"
    # their own exception types, with the same sentence
    (tmp_path / "bind").write_bytes(b"\n")
    with pytest.raises(DirectoryError, match="^ldap.bind_password_file: .* is empty$"):
        read_bind_password(bind)
    (tmp_path / "writer").write_bytes(b"\xff\n")
    with pytest.raises(
        WriterError, match="^verification.ldap.writer_password_credential: .* is not UTF-8$"
    ):
        writer_password(writer)
