"""A private Postfix (with Cyrus SASL) and a `policyd serve` subprocess, for the system tests.

The Postfix configuration is BUILT FROM conf/postfix/main.cf and conf/postfix/master.cf, the
fragments the README tells admins to paste. Test-only lines are added after them: paths, ports,
the policyd address, discard transports, XCLIENT, a TLS certificate. So the documented
configuration is what the tests run.

Nothing here leaves the machine. Every transport is `discard:`, every daemon listens on
127.0.0.1, and every process is stopped by its PID.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.reaper import terminate

REPO = Path(__file__).resolve().parents[2]
CONF_POSTFIX = REPO / "conf" / "postfix"

#: The policyd endpoint as written in conf/postfix/main.cf; the tests replace it by theirs.
DOC_POLICY_ENDPOINT = "inet:127.0.0.1:10040"

#: Service names in conf/postfix/master.cf and the port keys the tests use for them.
DOC_SERVICES = {"submission": "submission", "smtp": "mx"}

#: The sender domain of PolicydProcess.mark()'s own requests (RFC 2606: never a real domain).
MARK_DOMAIN = "policyd-mark.invalid"


def is_mark_line(line: str) -> bool:
    """True for policyd's log line about a PolicydProcess.mark() request."""
    return f"@{MARK_DOMAIN}" in line


#: SASL users of the test Postfix (login -> password).
DEFAULT_USERS: Mapping[str, str] = {
    "alice": "alice-secret",
    "bob": "bob-secret",
    "carol": "carol-secret",
    "dave": "dave-secret",
}

#: Seconds: every socket operation of the test client, and every wait, is bounded.
SMTP_TIMEOUT = 15.0

#: Everything started and not yet stopped, stopped at interpreter exit whatever happened to
#: the test (the fixtures stop them at teardown already).
_LIVE: set[PostfixServer | PolicydProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until 127.0.0.1:port accepts a connection (or the process died)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                ) from None
            time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_master(
    pid: int, postfix: Callable[..., subprocess.CompletedProcess[str]], timeout: float = 10.0
) -> None:
    """`postfix stop` (through the given runner), then SIGKILL for the master and every child
    of it still there after timeout."""
    children = _children_of(pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        postfix("stop", timeout=timeout)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in [pid, *children, *_children_of(pid)]:
        if _pid_alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def _children_of(pid: int) -> list[int]:
    """Direct children of pid, from /proc (Postfix's master forks its daemons)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields_ = stat.rsplit(")", 1)[-1].split()
        if len(fields_) > 1 and fields_[1] == str(pid):
            out.append(int(d.name))
    return out


# ---------------------------------------------------------------------------------------------
# master.cf handling


@dataclass
class MasterEntry:
    """One master.cf service: its first line's columns and its continuation lines."""

    columns: list[str]
    args: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.columns[0]

    def render(self) -> str:
        head = " ".join(f"{c:<8}" for c in self.columns[:-1]) + " " + self.columns[-1]
        return "\n".join([head, *(f"  {a}" for a in self.args)])


def parse_master_cf(text: str) -> list[MasterEntry]:
    """The services of a master.cf; comments are dropped, continuation lines kept."""
    entries: list[MasterEntry] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if not entries:
                raise ValueError(f"master.cf continuation line before any service: {raw!r}")
            entries[-1].args.append(stripped)
        else:
            cols = stripped.split()
            if len(cols) < 8:
                raise ValueError(f"master.cf service line with fewer than 8 columns: {raw!r}")
            entries.append(MasterEntry(cols[:7] + [" ".join(cols[7:])]))
    return entries


#: The internal services a test Postfix needs (no smtp/lmtp/local/virtual/pipe clients: nothing
#: can leave). chroot is "n" everywhere.
INTERNAL_SERVICES = """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


# ---------------------------------------------------------------------------------------------
# Postfix


class PostfixServer:
    """A private Postfix instance in `workdir`, configured from conf/postfix/.

    Services (ports in `.ports`):
      "submission"       conf/postfix/master.cf's submission service
      "mx"               conf/postfix/master.cf's smtp (port 25) service
      "submission-realm" the submission service again, with the other smtpd_sasl_local_domain
                         (so one instance offers both login forms: "alice" and
                         "alice@example.org")
    """

    def __init__(
        self,
        workdir: Path,
        policy_port: int,
        *,
        users: Mapping[str, str] = DEFAULT_USERS,
        local_domains: Sequence[str] = ("example.org", "example.net", "carol.example"),
        sasl_realm: str = "example.org",
        sasl_local_domain: str = "",
        hostname: str = "mail.test",
        conf_dir: Path = CONF_POSTFIX,
        extra_main_cf: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        #: more main.cf parameters, appended last (e.g. the milter lines of conf/postfix/milter.cf)
        self.extra_main_cf = dict(extra_main_cf or {})
        self.policy_port = policy_port
        self.users = dict(users)
        self.local_domains = tuple(local_domains)
        self.sasl_realm = sasl_realm
        self.sasl_local_domain = sasl_local_domain
        self.hostname = hostname
        self.conf_dir = conf_dir
        self.config_dir = workdir / "etc"
        self.queue_dir = workdir / "queue"
        self.data_dir = workdir / "data"
        # Debian's Postfix reads Cyrus's smtpd.conf from $config_directory/sasl and ignores
        # cyrus_sasl_config_path (Debian patch 07_sasl_config): use that directory, and set
        # the parameter too for other builds.
        self.sasl_dir = self.config_dir / "sasl"
        self.tls_dir = workdir / "tls"
        self.log_file = workdir / "postfix.log"
        self.ports = {"submission": free_port(), "mx": free_port(), "submission-realm": free_port()}
        self.master_pid: int | None = None
        self.ca_file = self.tls_dir / "cert.pem"

    # -- configuration ------------------------------------------------------------------------

    def main_cf(self) -> str:
        doc = (self.conf_dir / "main.cf").read_text(encoding="utf-8")
        if doc.count(DOC_POLICY_ENDPOINT) < 1:
            raise AssertionError(f"conf/postfix/main.cf no longer calls {DOC_POLICY_ENDPOINT}")
        doc = doc.replace(DOC_POLICY_ENDPOINT, f"inet:127.0.0.1:{self.policy_port}")
        w = self.workdir
        test_only = f"""
# ============================================================================================
# TEST-ONLY lines added by tests/servers/postfix.py (everything above is conf/postfix/main.cf)
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
myhostname = {self.hostname}
mydomain = test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
# IPv6 too, so XCLIENT ADDR=IPV6:... is accepted.
inet_protocols = ipv4, ipv6
# Explicitly NOT loopback: otherwise every test client would be a trusted network.
mynetworks = 192.0.2.254/32
# The test client poses as other client addresses (and so exercises the allocated ranges).
smtpd_authorized_xclient_hosts = 127.0.0.1
# Our domains are accepted, and everything, ours or not, is discarded: nothing leaves.
relay_domains = {", ".join(self.local_domains)}
relay_recipient_maps =
relay_transport = discard:
default_transport = discard:
local_transport = discard:
virtual_transport = discard:
alias_maps =
alias_database =
biff = no
notify_classes =
# No syslog here: Postfix's own log file.
maillog_file = {w}/postfix.log
maillog_file_prefixes = {w}
# Cyrus SASL with a sasldb file.
cyrus_sasl_config_path = {self.sasl_dir}
smtpd_sasl_local_domain = {self.sasl_local_domain}
# The submission service requires STARTTLS: a throwaway self-signed certificate.
smtpd_tls_chain_files = {self.tls_dir}/key.pem, {self.tls_dir}/cert.pem
# No penalty sleeps for the deliberately rejected commands of the tests.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
in_flow_delay = 0
"""
        extra = "".join(f"{k} = {v}\n" for k, v in self.extra_main_cf.items())
        if extra:
            extra = "# Added by the test (PostfixServer(extra_main_cf=...))\n" + extra
        return doc.rstrip("\n") + "\n" + test_only + extra

    def master_cf(self) -> str:
        entries = parse_master_cf((self.conf_dir / "master.cf").read_text(encoding="utf-8"))
        by_name = {e.name: e for e in entries}
        out: list[MasterEntry] = []
        for doc_name, key in DOC_SERVICES.items():
            e = by_name.get(doc_name)
            if e is None:
                raise AssertionError(f"conf/postfix/master.cf has no {doc_name!r} service")
            if e.columns[1] != "inet" or e.columns[4] != "n":
                raise AssertionError(
                    f"conf/postfix/master.cf {doc_name!r}: expected 'inet' and chroot 'n'"
                )
            e.columns[0] = f"127.0.0.1:{self.ports[key]}"
            out.append(e)
        # The submission service again on its own port, with the other smtpd_sasl_local_domain.
        sub = by_name["submission"]
        other = "" if self.sasl_local_domain else self.sasl_realm
        realm = MasterEntry(
            [f"127.0.0.1:{self.ports['submission-realm']}", *sub.columns[1:]],
            [
                *sub.args,
                "-o syslog_name=postfix/submission-realm",
                f"-o smtpd_sasl_local_domain={other}",
            ],
        )
        out.append(realm)
        extra = set(by_name) - set(DOC_SERVICES)
        if extra:
            raise AssertionError(
                f"conf/postfix/master.cf has services the tests do not run: {extra}"
            )
        return (
            "# TEST master.cf built by tests/servers/postfix.py from conf/postfix/master.cf\n"
            + "\n".join(e.render() for e in out)
            + "\n# TEST-ONLY internal services (no delivery agents: everything is discarded)\n"
            + INTERNAL_SERVICES
        )

    def login_name(self, user: str, *, service: str = "submission") -> str:
        """The sasl_username Postfix reports for `user` logging in on `service`."""
        local_domain = self.sasl_local_domain
        if service == "submission-realm":
            local_domain = "" if self.sasl_local_domain else self.sasl_realm
        return f"{user}@{local_domain}" if local_domain else user

    def _write_sasl(self) -> None:
        self.sasl_dir.mkdir(mode=0o755)
        db = self.sasl_dir / "sasldb2"
        (self.sasl_dir / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {db}\n"
            "mech_list: PLAIN LOGIN\n",
            encoding="ascii",
        )
        # Cyrus looks a login up in the realm it comes with ("alice@example.org" -> realm
        # example.org) or, without one, in smtpd_sasl_local_domain or else the server's
        # hostname. Every user exists in both realms, so every login form works.
        for realm in (self.sasl_realm, self.hostname):
            for user, password in self.users.items():
                subprocess.run(
                    ["saslpasswd2", "-p", "-c", "-f", str(db), "-u", realm, user],
                    input=password.encode(),
                    check=True,
                    timeout=10,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
        shutil.chown(db, "root", "postfix")
        db.chmod(0o640)

    def _write_tls(self) -> None:
        self.tls_dir.mkdir(mode=0o755)
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={self.hostname}",
                "-addext",
                f"subjectAltName=DNS:{self.hostname},IP:127.0.0.1",
                "-keyout",
                str(self.tls_dir / "key.pem"),
                "-out",
                str(self.tls_dir / "cert.pem"),
            ],
            check=True,
            timeout=30,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        (self.tls_dir / "key.pem").chmod(0o600)

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # mkdtemp makes 0700: Postfix's user could not get in
        # Postfix's daemons run as the postfix user and must reach every file here. Do not use
        # pytest's tmp_path: pytest re-chmods /tmp/pytest-of-USER to 0700 whenever another
        # pytest session starts, and Postfix then fails at random (master.lock, sasldb2).
        for p in self.workdir.parents:
            if not p.stat().st_mode & 0o001:
                raise RuntimeError(
                    f"{p} is not searchable by others: Postfix's own user could "
                    f"not reach {self.workdir}; use a directory under /tmp"
                )
        self.config_dir.mkdir(mode=0o755)
        self.queue_dir.mkdir(mode=0o755)
        self.data_dir.mkdir(mode=0o700)
        shutil.chown(self.data_dir, "postfix", "postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf(), encoding="utf-8")
        (self.config_dir / "master.cf").write_text(self.master_cf(), encoding="utf-8")
        self._write_sasl()
        self._write_tls()
        self.log_file.touch()

    # -- life cycle ---------------------------------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "MAIL_CONFIG": str(self.config_dir)},
        )

    def start(self, timeout: float = 20.0) -> None:
        if not self.config_dir.exists():
            self.write_config()
        r = self._postfix("start")
        if r.returncode != 0:
            raise RuntimeError(
                f"postfix start failed ({r.returncode}):\n{r.stdout}{r.stderr}\n"
                f"--- log ---\n{self.log_text()}"
            )
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + timeout
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pid_file} after {timeout} s\n{self.log_text()}")
            time.sleep(0.05)
        self.master_pid = int(pid_file.read_text().strip())
        _LIVE.add(self)
        for port in self.ports.values():
            wait_for_port(port, max(1.0, deadline - time.monotonic()))
        # A listening port is the master's; smtpd itself may still die on a config error
        # (it reads main.cf only when the first client comes). Ask each service for its
        # greeting, so a bad configuration fails here, with the log, instead of as timeouts.
        for name, port in self.ports.items():
            banner = b""
            with (
                contextlib.suppress(OSError),
                socket.create_connection(
                    ("127.0.0.1", port), timeout=max(1.0, deadline - time.monotonic())
                ) as s,
            ):
                banner = s.recv(512)
                s.sendall(b"QUIT\r\n")
            if not banner.startswith(b"220 "):
                self.stop()
                raise RuntimeError(
                    f"Postfix service {name!r} (port {port}) gave no greeting "
                    f"({banner!r})\n--- log ---\n{self.log_text()}"
                )

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.master_pid
        if pid is None:
            return
        stop_master(pid, self._postfix, timeout)
        self.master_pid = None
        _LIVE.discard(self)

    def __enter__(self) -> PostfixServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observing ----------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the mail log has a line matching `pattern` (a regex); return the match."""
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text())
            if m:
                return m
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_text().splitlines()[-30:])
                raise AssertionError(
                    f"no log line matching {pattern!r} within {timeout} s; log tail:\n{tail}"
                )
            time.sleep(0.02)

    def wait_delivered(self, queue_id: str, recipient: str, timeout: float = 10.0) -> str:
        """Wait until Postfix has "delivered" (discarded) the queued message to recipient."""
        m = self.wait_for_log(
            rf"^.*\b{re.escape(queue_id)}: to=<{re.escape(recipient)}>.*status=sent \(.*$", timeout
        )
        return m.group(0)


# ---------------------------------------------------------------------------------------------
# policyd as a subprocess


class PolicydProcess:
    """`python -m policyd serve --config F --listen 127.0.0.1:PORT`, stderr captured to a file."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_file = workdir / "policyd.toml"
        self.log_file = workdir / "policyd.log"
        self.starts = 0
        self._marks = 0

    def start(self, config_text: str, timeout: float = 15.0) -> None:
        if self.proc is not None:
            raise RuntimeError("policyd already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(config_text, encoding="utf-8")
        self.starts += 1
        with open(self.log_file, "ab") as log:
            log.write(f"--- policyd start #{self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "policyd",
                    "serve",
                    "--config",
                    str(self.config_file),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # a ^C to pytest must not hit policyd behind our back
            )
        _LIVE.add(self)
        try:
            wait_for_port(self.port, timeout, self.proc)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise RuntimeError(f"policyd did not start: {e}\n--- log ---\n{self.log_text()}") from e

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        terminate(proc, timeout)

    def restart(self, config_text: str) -> None:
        self.stop()
        self.start(config_text)

    def reload(self, config_text: str, timeout: float = 10.0) -> None:
        """Write a new config and send SIGHUP; wait until policyd says it reloaded it.

        The listener and Postfix's open connections stay: no reconnect penalty."""
        if not self.running:
            raise RuntimeError("policyd is not running")
        assert self.proc is not None
        mark = self.mark()
        self.config_file.write_text(config_text, encoding="utf-8")
        self.proc.send_signal(signal.SIGHUP)
        m = self.wait_for_log(r"^.*\b(reloaded|reload failed)\b.*$", since=mark, timeout=timeout)
        if "reload failed" in m.group(0):
            raise RuntimeError(f"policyd did not reload: {m.group(0)}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        """A position in the log; `log_since(mark)` returns what was logged after it.

        policyd logs a decision just after sending the reply, so a test that got its reply may
        look before the line is written: a test's mark would then see the previous test's
        line. So a running policyd is first sent a request of our own (protocol_state
        CONNECT: a DUNNO, no lookup), and the mark is placed after its decision line. policyd
        handles requests in order on one event loop, so every earlier decision line is
        written by then. Such lines carry a sender in MARK_DOMAIN; `is_mark_line` tells them.
        """
        if not self.running:
            return len(self.log_text())
        self._marks += 1
        token = f"mark-{os.getpid()}-{self._marks}@{MARK_DOMAIN}"
        request = (
            "request=smtpd_access_policy\nprotocol_state=CONNECT\nclient_address=127.0.0.1\n"
            f"sender={token}\n\n"
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(request.encode())
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        deadline = time.monotonic() + 5
        rx = re.compile(rf"^.*{re.escape(token)}.*\n", re.MULTILINE)
        while True:
            m = rx.search(self.log_text())
            if m:
                return m.end()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"policyd did not log the mark request {token} (reply {reply!r})"
                )
            time.sleep(0.005)

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    def wait_for_log(self, pattern: str, since: int = 0, timeout: float = 5.0) -> re.Match[str]:
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_since(since))
            if m:
                return m
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_since(since).splitlines()[-20:])
                raise AssertionError(
                    f"no policyd log line matching {pattern!r} within {timeout} s;"
                    f" log since mark:\n{tail}"
                )
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# SMTP client


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # the reply text, lines joined with "\n", without the code

    @property
    def enhanced(self) -> str:
        """The enhanced status code ("5.7.1") at the start of the text, or ""."""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.text)
        return m.group(1) if m else ""

    @property
    def queue_id(self) -> str:
        m = re.search(r"queued as ([0-9A-Za-z]+)", self.text)
        return m.group(1) if m else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RecordingSMTP(smtplib.SMTP):
    """smtplib.SMTP that records the session: "C: " lines sent, "S: " lines received.

    SMTP AUTH credentials are replaced by "<credentials>" in the transcript.
    """

    def __init__(self, host: str, port: int, timeout: float = SMTP_TIMEOUT) -> None:
        self.transcript: list[str] = []
        super().__init__(host, port, local_hostname="client.test", timeout=timeout)

    def send(self, s: str | bytes) -> None:  # type: ignore[override]
        text = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
        for line in text.removesuffix("\r\n").split("\r\n"):
            if line.upper().startswith("AUTH "):
                parts = line.split(" ", 2)
                line = " ".join(parts[:2] + (["<credentials>"] if len(parts) > 2 else []))
            self.transcript.append(f"C: {line}")
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        code, msg = super().getreply()
        lines = msg.decode("utf-8", "replace").split("\n") or [""]
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            self.transcript.append(f"S: {code}{sep}{line}")
        return code, msg


@dataclass
class Session:
    """The outcome of one SMTP transaction driven by `send_mail`."""

    replies: dict[str, Reply]  # "mail", "rcpt", "data" (as far as the session got)
    transcript: list[str]

    @property
    def final(self) -> Reply:
        """The reply that decided the transaction: the first failure, else the DATA reply."""
        for step in ("mail", "rcpt", "data"):
            r = self.replies.get(step)
            if r is None:
                break
            if r.code >= 400 or step == "data":
                return r
        raise AssertionError(f"incomplete session: {self.replies}")

    @property
    def accepted(self) -> bool:
        r = self.replies.get("data")
        return r is not None and r.code == 250 and bool(r.queue_id)


@functools.cache
def _tls_client_context() -> ssl.SSLContext:
    # The test Postfix has a throwaway self-signed certificate: no verification, and no CA
    # bundle to load (ssl.create_default_context() spends ~30 ms on that per session).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send_mail(
    port: int,
    *,
    sender: str,
    recipient: str,
    login: str | None = None,
    password: str | None = None,
    xclient_addr: str | None = None,
    starttls: bool = True,
    subject: str = "policyd system test",
    smtputf8: bool = False,
) -> Session:
    """One SMTP session: EHLO, [STARTTLS], [XCLIENT ADDR=...], [AUTH PLAIN], MAIL, RCPT, and
    DATA when RCPT was accepted. Every socket operation is bounded by SMTP_TIMEOUT.
    smtputf8: MAIL FROM carries SMTPUTF8 and the commands are sent in UTF-8 (a non-ASCII
    sender)."""
    replies: dict[str, Reply] = {}
    smtp = RecordingSMTP("127.0.0.1", port)
    if smtputf8:
        smtp.command_encoding = "utf-8"
    try:
        smtp.ehlo()
        if starttls:
            code, msg = smtp.starttls(context=_tls_client_context())
            if code != 220:
                raise AssertionError(f"STARTTLS refused: {code} {msg!r}")
            smtp.ehlo()
        if xclient_addr is not None:
            code, msg = smtp.docmd("XCLIENT", f"ADDR={xclient_addr}")
            if code != 220:
                raise AssertionError(f"XCLIENT refused: {code} {msg!r}")
            smtp.ehlo_resp = None
            smtp.esmtp_features = {}
            smtp.ehlo()
        if login is not None:
            assert password is not None
            smtp.user, smtp.password = login, password
            code, msg = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
            if code != 235:
                raise AssertionError(f"AUTH failed: {code} {msg!r}")
        code, msg = smtp.docmd("MAIL", f"FROM:<{sender}>" + (" SMTPUTF8" if smtputf8 else ""))
        replies["mail"] = Reply(code, msg.decode("utf-8", "replace"))
        if code == 250:
            code, msg = smtp.docmd("RCPT", f"TO:<{recipient}>")
            replies["rcpt"] = Reply(code, msg.decode("utf-8", "replace"))
        if replies.get("rcpt") and replies["rcpt"].code == 250:
            body = (
                f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n"
                f"Message-ID: <{time.time_ns()}@client.test>\r\n"
                "\r\nHello from the system tests.\r\n"
            )
            code, msg = smtp.docmd("DATA")
            if code == 354:
                smtp.send(body.encode() + b".\r\n")
                code, msg = smtp.getreply()
            replies["data"] = Reply(code, msg.decode("utf-8", "replace"))
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
    finally:
        smtp.close()
    return Session(replies, smtp.transcript)
