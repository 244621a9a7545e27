"""A private OpenLDAP slapd for tests: temp dir, random loopback ports, foreground process.

    pki = make_pki(tmp / "pki")                      # optional: test CA + server cert + wrong CA
    with Slapd(tmp / "slapd", pki=pki) as ldap:      # writes slapd.conf, slapadd, starts
        ldap.url, ldap.ldaps_url, ldap.base_dn, ldap.bind_dn, ldap.bind_password
        ldap.kill(); ldap.start()                    # SIGKILL, then again on the same ports/data
        ldap.freeze(); ldap.thaw()                   # SIGSTOP / SIGCONT: TCP accepted, no answers
        replica = ldap.replica(tmp / "replica")      # second copy of the current data, own ports

slapd runs with `-d 0` in the foreground, so the Popen PID is the daemon itself; its stderr goes
to `<workdir>/slapd.log`. Every started process is remembered and killed by PID at interpreter
exit, whatever happened to the test (the fixtures also stop it at teardown).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers.reaper import reaped_at_exit

REPO = Path(__file__).resolve().parents[2]
DIRECTORY_LDIF = REPO / "tests" / "data" / "directory.ldif"
EXAMPLE_LDIF = REPO / "conf" / "ldap" / "example.ldif"
ACL_FILE = REPO / "conf" / "ldap" / "acl.conf"
#: The rules a site already has, after ACL_FILE (which only adds: `by * break`).
SITE_ACL = REPO / "tests" / "data" / "acl-site.conf"
#: Verified sender addresses (issue 13): the shipped schema, and its ACL (ahead of ACL_FILE).
SENDERS_SCHEMA = REPO / "conf" / "ldap" / "policyd-senders.schema"
SENDERS_ACL = REPO / "conf" / "ldap" / "acl-senders.conf"

SCHEMA_DIR = Path("/etc/ldap/schema")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson", "misc")
MODULE_DIR = Path("/usr/lib/ldap")

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
BIND_DN = f"cn=policyd,ou=services,{BASE_DN}"
#: The policyd account's password in tests/data/directory.ldif.
BIND_PASSWORD = "policyd-secret"
#: ... and in conf/ldap/example.ldif.
EXAMPLE_BIND_PASSWORD = "change-me"

_LIVE = reaped_at_exit(cont=True)


def binary(name: str) -> str:
    """Absolute path of a tool: PATH first, then the sbin directories a non-root PATH lacks.
    The bare name when not found (require_binaries then reports it missing)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin") or name


#: What a slapd test needs installed (Debian: slapd; openssl for the test PKI).
REQUIRED_BINARIES = ("slapd", "slapadd", "slaptest", "slapcat", "openssl")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    p = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({p.returncode}):\n"
            f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}"
        )
    return p.stdout


# ---------------------------------------------------------------------------------------------
# Test PKI


@dataclass(frozen=True)
class Pki:
    """A test CA and a server certificate it signed (SAN IP:127.0.0.1, DNS:localhost), plus an
    unrelated "wrong" CA that signed nothing the server uses (for negative tests)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    wrong_ca_cert: Path


def make_pki(directory: Path) -> Pki:
    """Generate the test PKI with openssl (EC P-256 keys: fast). About 0.1 s."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name, cn in (("ca", "policyd test CA"), ("wrong-ca", "unrelated wrong CA")):
        _run(
            [
                binary("openssl"),
                "req",
                "-x509",
                *ec,
                "-keyout",
                f"{name}.key",
                "-out",
                f"{name}.crt",
                "-days",
                "3650",
                "-subj",
                f"/CN={cn}",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            cwd=d,
        )
    _run(
        [
            binary("openssl"),
            "req",
            "-new",
            *ec,
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        cwd=d,
    )
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _run(
        [
            binary("openssl"),
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
        ],
        cwd=d,
    )
    return Pki(
        dir=d,
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        wrong_ca_cert=d / "wrong-ca.crt",
    )


# ---------------------------------------------------------------------------------------------
# slapd


class SlapdError(RuntimeError):
    pass


class Slapd:
    """One private slapd. The constructor writes slapd.conf and loads the data (slapadd);
    start() runs it. Usable as a context manager (start on enter, stop on exit)."""

    def __init__(
        self,
        workdir: Path,
        *,
        ldif: Path | None = DIRECTORY_LDIF,
        base_dn: str = BASE_DN,
        pki: Pki | None = None,
        acl_file: Path = ACL_FILE,
        site_acl: Path | None = SITE_ACL,
        extra_schemas: tuple[Path, ...] = (),
        port: int | None = None,
        ldaps_port: int | None = None,
        _ldif_text: bytes | None = None,
        ppolicy: bool = False,
    ) -> None:
        #: load the ppolicy overlay (it keeps pwdChangedTime), readable by the policyd account
        self.ppolicy = ppolicy
        self.workdir = Path(workdir)
        self.base_dn = base_dn
        self.pki = pki
        self.acl_file = acl_file
        self.site_acl = site_acl
        self.more_schemas = extra_schemas
        self.port = port or free_port()
        self.ldaps_port = (ldaps_port or free_port()) if pki else None
        self._ports_chosen = port is None and ldaps_port is None
        self._started_once = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "db").mkdir(exist_ok=True)
        (self.workdir / "run").mkdir(exist_ok=True)
        self.conf = self.workdir / "slapd.conf"
        self.log = self.workdir / "slapd.log"
        self.conf.write_text(self._slapd_conf())
        _run([binary("slaptest"), "-u", "-f", str(self.conf)])
        if _ldif_text is not None:
            _run(
                [binary("slapadd"), "-q", "-f", str(self.conf), "-l", "/dev/stdin"],
                stdin=_ldif_text,
            )
        elif ldif is not None:
            _run([binary("slapadd"), "-q", "-f", str(self.conf), "-l", str(ldif)])

    # -- identity -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        if self.ldaps_port is None:
            raise SlapdError("this slapd was started without TLS (pass pki=make_pki(...))")
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def admin_dn(self) -> str:
        return f"cn=admin,{self.base_dn}"

    @property
    def admin_password(self) -> str:
        return ADMIN_PASSWORD

    @property
    def bind_dn(self) -> str:
        return f"cn=policyd,ou=services,{self.base_dn}"

    @property
    def bind_password(self) -> str:
        return BIND_PASSWORD

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- config ---------------------------------------------------------------------------
    def _slapd_conf(self) -> str:
        w = self.workdir
        lines = [f'include "{SCHEMA_DIR / s}.schema"' for s in SCHEMAS]
        lines.append(f'include "{SENDERS_SCHEMA}"')
        lines += [f'include "{p}"' for p in self.more_schemas]
        lines += [
            f'modulepath "{MODULE_DIR}"',
            "moduleload back_mdb",
            *(["moduleload ppolicy"] if self.ppolicy else []),
            f'pidfile "{w / "run" / "slapd.pid"}"',
            f'argsfile "{w / "run" / "slapd.args"}"',
            "loglevel none",
            "threads 8",
        ]
        if self.pki:
            lines += [
                f'TLSCACertificateFile "{self.pki.ca_cert}"',
                f'TLSCertificateFile "{self.pki.server_cert}"',
                f'TLSCertificateKeyFile "{self.pki.server_key}"',
            ]
        lines += [
            "database mdb",
            "maxsize 67108864",
            f'suffix "{self.base_dn}"',
            f'rootdn "{self.admin_dn}"',
            f"rootpw {ADMIN_PASSWORD}",
            f'directory "{w / "db"}"',
            "index objectClass eq",
            "index uid,mail,mailLocalAddress,member eq",
            "index policydSenderAddress eq",
        ]
        if self.ppolicy:
            lines += [
                "overlay ppolicy",
                f'access to attrs=pwdChangedTime by dn.exact="{self.bind_dn}" read by * break',
            ]
        lines += [
            f'include "{SENDERS_ACL}"',
            f'include "{self.acl_file}"',
        ]
        if self.site_acl is not None:
            lines.append(f'include "{self.site_acl}"')
        lines += [
            # cn=Monitor (static in Debian's slapd), readable by the admin only: operations()
            # (after every rule of the data's database: a rule belongs to the database above it)
            "database monitor",
            f'access to * by dn.exact="{self.admin_dn}" read by * none',
        ]
        return "\n".join(lines) + "\n"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> Slapd:
        """Start (again) on the same ports and data; return once it answers LDAP."""
        if self.running:
            raise SlapdError(f"slapd already running (pid {self.pid})")
        for attempt in range(3):
            try:
                self._start(timeout)
                break
            except SlapdError as e:
                # A restart right after a SIGKILL has (once, in CI) exited 1 without a word
                # (-d 0 prints nothing): tried again on the same ports and data.
                if self._started_once and attempt < 2 and "exited with" in str(e):
                    time.sleep(0.2)
                    continue
                # A port we picked was taken in between: pick new ones (first start only). With
                # -d 0 slapd may say nothing about it and just exit 1 (seen in CI with two runs
                # on one machine), so a silent exit counts too.
                if not (
                    self._ports_chosen
                    and not self._started_once
                    and attempt < 2
                    and ("already in use" in str(e) or "exited with" in str(e))
                ):
                    raise
                self.port = free_port()
                if self.ldaps_port is not None:
                    self.ldaps_port = free_port()
        self._started_once = True
        return self

    def _start(self, timeout: float) -> None:
        self._monitor_binds = 0  # (cn=Monitor counts from each start)
        urls = self.url + "/"
        if self.ldaps_port is not None:
            urls += f" ldaps://127.0.0.1:{self.ldaps_port}/"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary("slapd"), "-d", "0", "-f", str(self.conf), "-h", urls],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a ^C to pytest must not hit slapd behind our back
            )
        _LIVE[self.proc.pid] = self.proc
        self.frozen = False
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                _LIVE.pop(self.proc.pid, None)
                raise SlapdError(
                    f"slapd exited with {self.proc.returncode} at startup; log:\n{self.log_text()}"
                )
            try:
                self.probe(timeout=1)
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.02)
        self.kill()
        raise SlapdError(
            f"slapd did not answer within {timeout} s ({last}); log:\n{self.log_text()}"
        )

    def probe(self, timeout: int = 1) -> None:
        """One anonymous root DSE read; raises if the server does not answer."""
        import ldap3

        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=timeout)
        conn = ldap3.Connection(server, receive_timeout=timeout, client_strategy=ldap3.SAFE_SYNC)
        try:
            conn.open()
            ok, result, _, _ = conn.search("", "(objectClass=*)", search_scope=ldap3.BASE)
            if not ok:
                raise SlapdError(f"root DSE read failed: {result}")
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()
            if conn.socket is not None:  # ldap3 leaves the socket of a failed open() behind
                with contextlib.suppress(Exception):
                    conn.socket.close()

    def operations(self, kind: str = "Bind") -> int:
        """How many operations of this kind ("Bind", "Search", ...) slapd has completed since
        it started (cn=Monitor), not counting the binds of these reads themselves."""
        import ldap3

        self._monitor_binds = getattr(self, "_monitor_binds", 0) + 1

        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=2)
        conn = ldap3.Connection(
            server,
            user=self.admin_dn,
            password=self.admin_password,
            receive_timeout=5,
            client_strategy=ldap3.SAFE_SYNC,
        )
        try:
            if not conn.bind()[0]:
                raise SlapdError("admin bind for cn=Monitor failed")
            ok, result, response, _ = conn.search(
                f"cn={kind},cn=Operations,cn=Monitor",
                "(objectClass=*)",
                search_scope=ldap3.BASE,
                attributes=["monitorOpCompleted"],
            )
            if not ok or not response:
                raise SlapdError(f"cn=Monitor read failed: {result}")
            value = response[0]["attributes"]["monitorOpCompleted"]
            n = int(value[0] if isinstance(value, list) else value)
            return n - self._monitor_binds if kind == "Bind" else n
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (after SIGCONT if frozen), wait, then SIGKILL. Idempotent."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        _LIVE.pop(p.pid, None)
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL: the server dies at once; open client sockets see a reset."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        _LIVE.pop(p.pid, None)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts TCP connections, but nothing is answered."""
        if not self.running:
            raise SlapdError("slapd is not running")
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        # kill() returns once the signal is queued: a slapd thread already running may still
        # answer a request sent right after. Wait until every thread is stopped.
        deadline = time.monotonic() + 5.0
        while not _all_threads_stopped(self.proc.pid):
            if time.monotonic() > deadline:
                raise SlapdError("slapd did not stop on SIGSTOP within 5 s")
            time.sleep(0.005)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def replica(self, workdir: Path, *, start: bool = True) -> Slapd:
        """A second slapd (own ports, same PKI and ACL) holding a copy of the current data."""
        data = _run([binary("slapcat"), "-f", str(self.conf)])
        rep = Slapd(
            workdir,
            ldif=None,
            base_dn=self.base_dn,
            pki=self.pki,
            acl_file=self.acl_file,
            site_acl=self.site_acl,
            extra_schemas=self.more_schemas,
            _ldif_text=data,
        )
        if start:
            rep.start()
        return rep

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        """Stop and delete the working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Slapd:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else ("running" if self.running else "stopped")
        return f"<Slapd {self.url} pid={self.pid} {state}>"


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of `pid` is in the stopped state ("T" in /proc/PID/task/*/stat)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return bool(states) and all(state in ("T", "t") for state in states)
