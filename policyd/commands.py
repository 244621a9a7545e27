"""Running an outside command with a deadline: its output, or one error that names why.

Used to decrypt a systemd credential (`systemd-creds`, credentials.py) and to hand a
confirmation mail to the local sendmail (verification/mail.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class CommandError(Exception):
    """The command could not run, timed out, or exited non-zero (the message says which,
    with the last line it wrote to stderr)."""


def run_command(argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> bytes:
    """The command's stdout. Raises CommandError (never a partial success)."""
    try:
        p = subprocess.run(
            list(argv), input=stdin, capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise CommandError(f"cannot run {argv[0]}: {e}") from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CommandError(
            f"{argv[0]} exited with {p.returncode}" + (f": {err[-1][:200]}" if err else "")
        )
    return p.stdout
