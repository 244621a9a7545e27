"""A private Dovecot as Postfix's SASL backend only (no IMAP/POP), for the system tests.

    dv = Dovecot(workdir, auth_socket=queue_dir / "private" / "auth",
                 users={"alice@example.org": "pw", ...})            # passwd-file passdb
    dv = Dovecot(..., ldap=LdapPassdb(uri, base, bind_dn, password))  # or an LDAP passdb
    dv.start(); ...; dv.stop()

Logins are full addresses, lowercased (`auth_username_format = %Lu`, the default here;
`username_format="%Ln"` drops the domain): Dovecot returns that name and Postfix reports it as
sasl_username. Postfix: `smtpd_sasl_type = dovecot`, `smtpd_sasl_path =
private/auth` (relative to its queue directory, where the socket is made). Runs in the
foreground (`dovecot -F`) from its own directory, with its own instance name; stopped by PID.
Needs the Debian package dovecot-core (dovecot-ldap for the LDAP passdb).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.servers.reaper import terminate
from tests.servers.requirements import require_binaries

WHY = "the existing-server tier needs Dovecot (apt-get install dovecot-core dovecot-ldap)"


def require_dovecot() -> None:
    require_binaries("dovecot", why=WHY)


@dataclass(frozen=True)
class LdapPassdb:
    """An LDAP passdb: the user's entry found by its mail attribute, the password compared by
    Dovecot (auth_bind = no, so the bind account must read userPassword)."""

    uri: str
    base: str
    bind_dn: str
    bind_password: str
    filter: str = "(&(objectClass=inetOrgPerson)(mail=%u))"


class Dovecot:
    def __init__(
        self,
        workdir: Path,
        auth_socket: Path,
        *,
        users: Mapping[str, str] | None = None,
        ldap: LdapPassdb | None = None,
        username_format: str = "%Lu",
    ) -> None:
        if (users is None) == (ldap is None):
            raise ValueError("give users (passwd-file) or ldap, not both")
        self.workdir = workdir
        self.auth_socket = auth_socket
        self.users = dict(users or {})
        self.ldap = ldap
        self.username_format = username_format
        self.conf = workdir / "dovecot.conf"
        self.log_file = workdir / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        for d in ("run", "state"):
            (w / d).mkdir(exist_ok=True)
        if self.ldap is None:
            users = w / "users"
            users.write_text(
                "".join(f"{u.lower()}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()),
                encoding="utf-8",
            )
            users.chmod(0o640)
            shutil.chown(users, "root", "dovecot")  # read by the auth process (user dovecot)
            passdb = f"passdb {{\n  driver = passwd-file\n  args = {users}\n}}\n"
        else:
            ext = w / "dovecot-ldap.conf.ext"
            ext.write_text(
                f"uris = {self.ldap.uri}\n"
                f"dn = {self.ldap.bind_dn}\n"
                f"dnpass = {self.ldap.bind_password}\n"
                "auth_bind = no\n"
                f"base = {self.ldap.base}\n"
                "scope = subtree\n"
                f"pass_filter = {self.ldap.filter}\n"
                "pass_attrs = mail=user,userPassword=password\n"
                "default_pass_scheme = PLAIN\n",
                encoding="utf-8",
            )
            ext.chmod(0o640)
            shutil.chown(ext, "root", "dovecot")
            passdb = f"passdb {{\n  driver = ldap\n  args = {ext}\n}}\n"
        self.conf.write_text(
            f"""\
# tests/servers/dovecot.py: Dovecot as Postfix's SASL backend only
instance_name = policyd-test-{secrets.token_hex(4)}
base_dir = {w}/run
state_dir = {w}/state
log_path = {self.log_file}
info_log_path = {self.log_file}
protocols =
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# %Lu: logins are full addresses, lowercased: alice@example.org (%Ln drops the domain)
auth_username_format = {self.username_format}
{passdb}userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {self.auth_socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
""",
            encoding="utf-8",
        )

    def start(self, timeout: float = 15.0) -> None:
        require_dovecot()
        self.write_config()
        self.auth_socket.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "dovecot.stderr", "ab")  # noqa: SIM115 (kept with the process)
        with log:
            self.proc = subprocess.Popen(
                [shutil.which("dovecot") or "dovecot", "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not self.auth_socket.exists():  # the socket appears a moment after the start
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not make {self.auth_socket}\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        terminate(proc, timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.auth_socket)

    def log_text(self) -> str:
        out = []
        for f in (self.log_file, self.workdir / "dovecot.stderr"):
            with contextlib.suppress(FileNotFoundError):
                out.append(f.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(out)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
