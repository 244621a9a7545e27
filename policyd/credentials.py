"""A password an admin gives policyd: a file, or a systemd credential (LoadCredential=).

Used for the LDAP bind (directory/ldap) and the verification writer's bind (verification/).
One trailing newline (LF or CRLF) is stripped. An error names the config key and the file,
never the password.
"""

from __future__ import annotations

import os
from pathlib import Path


class CredentialError(Exception):
    """The password cannot be read; str() is one line for the admin."""


def read_password(file: Path | None, credential: str, keys: str) -> str:
    """The password in `file` if set, else in the systemd credential named `credential`
    ($CREDENTIALS_DIRECTORY/<credential>). The config keys naming them are `keys` + "_file"
    and `keys` + "_credential" (say keys = "ldap.bind_password")."""
    file_key, credential_key = f"{keys}_file", f"{keys}_credential"
    if file is not None:
        path, key = Path(file), file_key
    else:
        creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
        if not creds:
            raise CredentialError(
                f"{credential_key} = {credential!r}, but $CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=)"
            )
        path, key = Path(creds) / credential, credential_key
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CredentialError(f"{key}: cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{key}: {path} is not UTF-8") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise CredentialError(f"{key}: {path} is empty")
    return text
