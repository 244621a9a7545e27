"""A systemd credential by name, found the way systemd finds it, inside the unit or not.

Under the unit (LoadCredential=NAME) systemd has copied it to $CREDENTIALS_DIRECTORY/NAME. From
a root shell (`policyd config-check`, `check`, `senders`) there is no such directory, so the
credential stores LoadCredential= itself searches for a relative name are searched in the same
order: /etc/credstore/, /run/credstore/, /usr/lib/credstore/ (plain files), then
/etc/credstore.encrypted/, /run/credstore.encrypted/, /usr/lib/credstore.encrypted/ (files made
by `systemd-creds encrypt`, read with `systemd-creds decrypt`). The same config therefore works
in both places. Nothing here logs or shows a credential's content.

read_password() is the one reader of a password an admin gives policyd (a file, or a
credential): the LDAP bind (directory/ldap) and the verification writer's bind (verification/).
One trailing newline (LF or CRLF) is stripped; an error names the config key, never the
password."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from policyd.commands import CommandError, run_command

#: searched in this order when $CREDENTIALS_DIRECTORY has no such credential
CREDSTORE_DIRS: tuple[Path, ...] = (
    Path("/etc/credstore"),
    Path("/run/credstore"),
    Path("/usr/lib/credstore"),
)
CREDSTORE_ENCRYPTED_DIRS: tuple[Path, ...] = (
    Path("/etc/credstore.encrypted"),
    Path("/run/credstore.encrypted"),
    Path("/usr/lib/credstore.encrypted"),
)
_DECRYPT_TIMEOUT = 10.0


class CredentialError(Exception):
    """The credential is missing or unreadable; the message says where it was looked for."""


def credential_problem(name: str) -> str | None:
    """Why a credential name cannot be used (None when it can): systemd's rules for names."""
    if not name or name in (".", "..") or "/" in name or len(name) > 255:
        return f"{name!r} is not a credential name (a file name, no '/')"
    return None


def read_credential(name: str) -> bytes:
    """The content of credential NAME (see the module docstring for where it is looked for).
    Raises CredentialError naming the places searched, never the content."""
    why = credential_problem(name)
    if why is not None:
        raise CredentialError(why)
    creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
    searched: list[str] = []
    if creds:
        path = Path(creds) / name
        data = _read_plain(path)
        if data is not None:
            return data
        searched.append(str(Path(creds)))
    for d in CREDSTORE_DIRS:
        data = _read_plain(d / name)
        if data is not None:
            return data
        searched.append(str(d))
    for d in CREDSTORE_ENCRYPTED_DIRS:
        path = d / name
        if path.exists():
            return _decrypt(name, path)
        searched.append(str(d))
    where = "$CREDENTIALS_DIRECTORY (not set), " if not creds else ""
    raise CredentialError(
        f"credential {name!r} not found in {where}{', '.join(searched)} "
        "(under systemd: LoadCredential=; from a shell: put it in /etc/credstore/, mode 0600)"
    )


def _read_plain(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CredentialError(f"cannot read {path}: {e.strerror or e}") from None


def _decrypt(name: str, path: Path) -> bytes:
    tool = shutil.which("systemd-creds")
    if tool is None:
        raise CredentialError(f"{path} is encrypted, but systemd-creds is not installed")
    try:
        return run_command(
            [tool, "decrypt", f"--name={name}", str(path), "-"], timeout=_DECRYPT_TIMEOUT
        )
    except CommandError as e:
        raise CredentialError(f"systemd-creds decrypt {path}: {e}") from None


def read_password(file: Path | None, credential: str, keys: str) -> str:
    """The password in `file` if set, else in the credential named `credential` (found as
    read_credential finds it). The config keys naming them are `keys` + "_file" and `keys` +
    "_credential" (say keys = "ldap.bind_password"), for the error message. Raises
    CredentialError, never showing the password."""
    file_key, credential_key = f"{keys}_file", f"{keys}_credential"
    if file is not None:
        path, key, where = Path(file), file_key, str(file)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CredentialError(f"{key}: cannot read {path}: {e.strerror or e}") from None
    else:
        key, where = credential_key, f"credential {credential!r}"
        try:
            data = read_credential(credential)
        except CredentialError as e:
            raise CredentialError(f"{key}: {e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{key}: {where} is not UTF-8") from None
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    if not text:
        raise CredentialError(f"{key}: {where} is empty")
    return text
