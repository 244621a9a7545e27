"""An existing mail server, the shape of the popular guides (issue 26), built from real parts in a
temp dir on loopback, for the tier that integrates policyd into it:

- Postfix with postscreen on "port 25" (its `smtpd pass` service), the smtpd services chrooted
  in the queue directory as Debian's master.cf has them, a `check_client_access`
  rule and an RBL-style reject there; submission ("587", STARTTLS) and submissions ("465",
  TLS on connect) with the $mua_relay_restrictions list, named by Debian's syslog_name;
- Dovecot as the SASL backend (tests/servers/dovecot.py), logins user@domain, its passdb in
  LDAP (a real slapd; Dovecot binds with its own account and compares userPassword);
- OpenDKIM signing what is submitted (smtpd_milters, milter_default_action = accept);
- a content filter on its own port (a small stand-in that adds a header and re-injects into
  Postfix's re-injection smtpd, the amavis 10024/10025 loop);
- two hosted domains with different people called alice; every delivery goes to an SMTP sink.

Outside clients are told apart by their source address on 127/8: 127.0.0.1 is the host itself
(mynetworks), 127.0.0.64/26 the DSL customers (mynetworks too: how the site relays for them
before policyd), everything else is "the Internet". Nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers.dovecot import Dovecot, LdapPassdb
from tests.servers.postfix import (
    INTERNAL_SERVICES,
    _tls_client_context,
    free_port,
    stop_master,
    wait_for_port,
)
from tests.servers.reaper import terminate
from tests.servers.requirements import require_binaries
from tests.servers.slapd import REQUIRED_BINARIES, Slapd, binary
from tests.servers.smtp_sink import SmtpSink

#: The people: login (= address) -> password. Two different alices.
USERS = {
    "alice@example.org": "alice-org-secret",
    "alice@example.net": "alice-net-secret",
    "bob@example.org": "bob-secret",
}
DOMAINS = ("example.org", "example.net")

HOST = "127.0.0.1"  # the server itself (webmail, cron)
INTERNET = "127.0.0.3"  # an ordinary sender on the Internet
ACCESS_LISTED = "127.0.0.5"  # refused by the admin's check_client_access rule
POSTSCREEN_LISTED = "127.0.0.6"  # dropped by postscreen's access list
RBL_LISTED = "127.0.0.7"  # refused as if listed in an RBL
ROAMING = "127.0.0.9"  # one of our users away from home, without AUTH
DSL = "127.0.0.66"  # a DSL customer in our allocated range 127.0.0.64/26
DSL_RANGE = "127.0.0.64/26"
#: Allocated to customers too, but only in policyd's ranges (not in mynetworks): they relay on
#: port 25 only once policyd decides that relay (`policyd postfix-lines --relay-on-25`).
NEW_DSL = "127.0.0.130"
NEW_DSL_RANGE = "127.0.0.128/26"

WHY = (
    "the existing-server tier needs Postfix, Dovecot and OpenDKIM "
    "(apt-get install postfix dovecot-core dovecot-ldap opendkim opendkim-tools slapd)"
)


def require_existing_server() -> None:
    require_binaries(
        "postfix",
        "postconf",
        "dovecot",
        "opendkim",
        "opendkim-genkey",
        *(binary(n) for n in REQUIRED_BINARIES),
        why=WHY,
    )


def users_ldif() -> bytes:
    """The people in LDAP: each alice her own entry (uid differs, mail is the login)."""
    out = [
        "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
        "o: Example\n",
        "dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n",
    ]
    for login, password in USERS.items():
        local, _, domain = login.partition("@")
        uid = f"{local}.{domain.split('.')[-1]}"
        out.append(
            f"dn: uid={uid},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\n"
            f"uid: {uid}\ncn: {local} ({domain})\nsn: {local}\nmail: {login}\n"
            f"userPassword: {password}\n"
        )
    return "\n".join(out).encode()


class OpenDkim:
    """opendkim signing mail whose {daemon_name} is ORIGINATING, for both domains."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        k = self.workdir
        k.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["opendkim-genkey", "-b", "1024", "-d", "example.org", "-s", "test", "-D", str(k)],
            check=True,
            timeout=30,
            capture_output=True,
        )
        conf = k / "opendkim.conf"
        conf.write_text(
            "Mode s\n"
            f"Domain {','.join(DOMAINS)}\n"
            "Selector test\n"
            f"KeyFile {k}/test.private\n"
            f"Socket inet:{self.port}@127.0.0.1\n"
            f"PidFile {k}/opendkim.pid\n"
            "MTA ORIGINATING\n"
            "RequireSafeKeys false\n"
            "Syslog no\n",
            encoding="ascii",
        )
        with open(k / "opendkim.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["opendkim", "-f", "-x", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port, timeout, self.proc)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class ContentFilter:
    """The content filter stand-in: takes mail on its port, adds X-Content-Filter, re-injects
    it into Postfix's re-injection service (as amavis does on 10024 -> 10025)."""

    HEADER = b"X-Content-Filter: passed by the stand-in\r\n"

    def __init__(self, reinject_port: int) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.reinject_port = reinject_port
        self.passed = 0
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = self.HEADER + bytes(envelope.content)
        try:
            with smtplib.SMTP("127.0.0.1", self.reinject_port, timeout=15) as smtp:
                smtp.sendmail(envelope.mail_from, list(envelope.rcpt_tos), content)
        except (OSError, smtplib.SMTPException) as e:
            return f"451 4.3.0 re-injection failed: {e}"
        self.passed += 1
        return "250 2.0.0 Ok: filtered and re-injected"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


@dataclass
class ExistingServer:
    """The whole server; `start()` brings every part up, `stop()` takes it down by PID."""

    workdir: Path
    sink: SmtpSink = field(init=False)
    ports: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.etc = self.workdir / "etc"
        self.queue = self.workdir / "queue"
        self.data = self.workdir / "data"
        self.tls = self.workdir / "tls"
        self.log_file = self.workdir / "postfix.log"
        self.ports = {
            "mx": free_port(),
            "submission": free_port(),
            "submissions": free_port(),
            "reinject": free_port(),
        }
        self.master_pid: int | None = None
        self.sink = SmtpSink()
        self.filter = ContentFilter(self.ports["reinject"])
        self.dkim = OpenDkim(self.workdir / "dkim")
        self.slapd: Slapd | None = None
        self.dovecot: Dovecot | None = None

    # -- configuration ------------------------------------------------------------------------

    def main_cf(self) -> str:
        e, w = self.etc, self.workdir
        return f"""\
# An existing server's main.cf (tests/servers/existing_server.py), before policyd
compatibility_level = 3.6
config_directory = {e}
queue_directory = {self.queue}
data_directory = {self.data}
myhostname = mail.example.org
mydomain = example.org
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
# the host itself, and the DSL customers we relay for
mynetworks = 127.0.0.1/32 {DSL_RANGE}
virtual_mailbox_domains = {", ".join(DOMAINS)}
virtual_mailbox_maps = texthash:{e}/vmailbox
# every delivery goes to the test's SMTP sink
virtual_transport = smtp:[127.0.0.1]:{self.sink.port}
default_transport = smtp:[127.0.0.1]:{self.sink.port}
relay_transport = smtp:[127.0.0.1]:{self.sink.port}
local_transport = error:no local delivery
alias_maps =
alias_database =
smtp_tls_security_level = none
biff = no
notify_classes =
maillog_file = {w}/postfix.log
maillog_file_prefixes = {w}
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
in_flow_delay = 0
# Dovecot SASL
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
smtpd_tls_chain_files = {self.tls}/key.pem, {self.tls}/cert.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
# relaying and the port-25 checks
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated,
    reject_unauth_destination, check_client_access cidr:{e}/access.cidr,
    check_client_access cidr:{e}/rbl.cidr
mua_relay_restrictions = permit_sasl_authenticated, reject
# DKIM signing
smtpd_milters = inet:127.0.0.1:{self.dkim.port}
non_smtpd_milters = $smtpd_milters
milter_default_action = accept
# the content filter loop
content_filter = smtp-amavis:[127.0.0.1]:{self.filter.port}
# postscreen
postscreen_access_list = permit_mynetworks, cidr:{e}/postscreen_access.cidr
postscreen_blacklist_action = drop
postscreen_greet_wait = 1s
postscreen_dnsbl_sites =
"""

    def master_cf(self) -> str:
        p = self.ports
        return f"""\
127.0.0.1:{p["mx"]} inet n - n - 1 postscreen
smtpd     pass  -       -       y       -       -       smtpd
dnsblog   unix  -       -       n       -       0       dnsblog
tlsproxy  unix  -       -       n       -       0       tlsproxy
127.0.0.1:{p["submission"]} inet n - y - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_relay_restrictions=$mua_relay_restrictions
  -o milter_macro_daemon_name=ORIGINATING
127.0.0.1:{p["submissions"]} inet n - y - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=$mua_relay_restrictions
  -o milter_macro_daemon_name=ORIGINATING
smtp      unix  -       -       n       -       -       smtp
smtp-amavis unix -      -       n       -       2       smtp
127.0.0.1:{p["reinject"]} inet n - n - - smtpd
  -o syslog_name=postfix/reinject
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o mynetworks=127.0.0.0/8
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_milters=
{INTERNAL_SERVICES}"""

    def write_config(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        w.chmod(0o755)
        self.etc.mkdir(mode=0o755)
        self.queue.mkdir(mode=0o755)
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, "postfix", "postfix")
        (self.etc / "main.cf").write_text(self.main_cf(), encoding="utf-8")
        (self.etc / "master.cf").write_text(self.master_cf(), encoding="utf-8")
        (self.etc / "vmailbox").write_text("".join(f"{u} {u}/\n" for u in USERS), encoding="utf-8")
        (self.etc / "access.cidr").write_text(
            f"{ACCESS_LISTED}/32 550 5.7.1 Your host is refused by our access rule\n"
        )
        (self.etc / "rbl.cidr").write_text(
            f"{RBL_LISTED}/32 554 5.7.1 Service unavailable; Client host [{RBL_LISTED}] "
            "blocked using rbl.example\n"
        )
        (self.etc / "postscreen_access.cidr").write_text(f"{POSTSCREEN_LISTED}/32 reject\n")
        self.tls.mkdir(mode=0o755)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=mail.example.org",
                "-keyout", str(self.tls / "key.pem"), "-out", str(self.tls / "cert.pem"),
            ],
            check=True,
            timeout=30,
            capture_output=True,
        )  # fmt: skip
        self.log_file.touch()

    # -- life cycle ---------------------------------------------------------------------------

    def postfix(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.etc), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, timeout: float = 30.0) -> None:
        require_existing_server()
        self.sink.start()
        self.filter.start()
        self.dkim.start()
        self.write_config()
        # Dovecot's auth socket lives in Postfix's private/ (made now, as Postfix wants it)
        private = self.queue / "private"
        private.mkdir(mode=0o700)
        shutil.chown(private, "postfix", "root")
        self.slapd = Slapd(self.workdir / "slapd", _ldif_text=users_ldif())
        self.slapd.start()
        self.dovecot = Dovecot(
            self.workdir / "dovecot",
            private / "auth",
            ldap=LdapPassdb(
                self.slapd.url, "dc=example,dc=org", self.slapd.admin_dn, self.slapd.admin_password
            ),
        )
        self.dovecot.start()
        r = self.postfix("start")
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed:\n{r.stdout}{r.stderr}\n{self.log_text()}")
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + timeout
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pid_file}\n{self.log_text()}")
            time.sleep(0.05)
        self.master_pid = int(pid_file.read_text().strip())
        for port in self.ports.values():
            wait_for_port(port, max(1.0, deadline - time.monotonic()))

    def reload(self) -> None:
        r = self.postfix("reload")
        if r.returncode != 0:
            raise RuntimeError(f"postfix reload failed:\n{r.stdout}{r.stderr}")
        time.sleep(1.0)  # the master restarts its daemons as they finish their clients

    def stop(self) -> None:
        pid = self.master_pid
        if pid is not None:
            stop_master(pid, self.postfix)
            self.master_pid = None
        for part in (self.dovecot, self.slapd, self.dkim, self.filter, self.sink):
            if part is None:
                continue
            with contextlib.suppress(Exception):
                part.stop()

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        terminate(proc)


# ---------------------------------------------------------------------------------------------
# The client: one SMTP transaction from a chosen source address


@dataclass
class Outcome:
    """What the client saw: the step that ended it, its code and text."""

    step: str  # "connect", "ehlo", "auth", "mail", "rcpt", "data", "sent"
    code: int
    text: str
    ehlo: str = ""

    @property
    def sent(self) -> bool:
        return self.step == "sent"

    def __str__(self) -> str:
        return f"{self.step}: {self.code} {self.text}"


def transaction(
    port: int,
    *,
    source: str,
    sender: str,
    recipient: str,
    login: str | None = None,
    password: str | None = None,
    starttls: bool = False,
    wrapper: bool = False,
    header_from: str | None = None,
    subject: str = "existing-server tier",
) -> Outcome:
    """EHLO, [STARTTLS], [AUTH PLAIN], MAIL, RCPT, DATA; stops at the first refusal."""
    try:
        if wrapper:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                "127.0.0.1",
                port,
                timeout=20,
                source_address=(source, 0),
                context=_tls_client_context(),
            )
        else:
            smtp = smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0))
    except smtplib.SMTPConnectError as e:
        err = e.smtp_error
        text = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)
        return Outcome("connect", e.smtp_code, text)
    except (OSError, smtplib.SMTPServerDisconnected) as e:
        return Outcome("connect", 0, str(e))
    try:
        code, msg = smtp.ehlo("client.example")
        if starttls:
            smtp.starttls(context=_tls_client_context())
            code, msg = smtp.ehlo("client.example")
        ehlo = msg.decode("utf-8", "replace")
        if login is not None:
            assert password is not None
            try:
                smtp.login(login, password)
            except smtplib.SMTPException as e:
                return Outcome("auth", getattr(e, "smtp_code", 0), str(e), ehlo)
        code, msg = smtp.docmd("MAIL", f"FROM:<{sender}>")
        if code != 250:
            return Outcome("mail", code, msg.decode("utf-8", "replace"), ehlo)
        code, msg = smtp.docmd("RCPT", f"TO:<{recipient}>")
        if code != 250:
            return Outcome("rcpt", code, msg.decode("utf-8", "replace"), ehlo)
        code, msg = smtp.docmd("DATA")
        if code != 354:
            return Outcome("data", code, msg.decode("utf-8", "replace"), ehlo)
        body = (
            f"From: <{header_from or sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@client.example>\r\n\r\nHello.\r\n.\r\n"
        )
        smtp.send(body.encode())
        code, msg = smtp.getreply()
        text = msg.decode("utf-8", "replace")
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        return Outcome("sent" if code == 250 else "data", code, text, ehlo)
    except smtplib.SMTPServerDisconnected as e:
        return Outcome("disconnected", 0, str(e))
    finally:
        smtp.close()
