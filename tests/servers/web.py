"""`policyd web` as a subprocess for tests, a small HTTP client, and a loopback SMTP sink.

    with WebServer(tmp / "web", config_text) as w:      # writes the config, starts, waits
        c = Client(w.url)                               # keeps cookies, never follows redirects
        r = c.get("/login"); r.status, r.headers, r.text, c.cookies
        c.post("/login", {"csrf": r.form_value("csrf"), "user": ..., "password": ...})

    with MailSink() as sink:                            # aiosmtpd on 127.0.0.1:<free port>
        msg = sink.wait_for("x@elsewhere.test")         # an email.message.EmailMessage

The server's stderr goes to `<workdir>/web.log` (`w.log_text()`); it is stopped by PID (SIGTERM,
then SIGKILL) at exit, pass or fail.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from tests.servers.reaper import reaped_at_exit, terminate
from tests.servers.slapd import REPO, free_port

_LIVE = reaped_at_exit()


class WebServer:
    def __init__(self, workdir: Path, config_text: str, port: int | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = workdir / "policyd.toml"
        self.config.write_text(config_text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> WebServer:
        log = open(self.workdir / "web.log", "ab")  # noqa: SIM115 - kept open by the child
        env = dict(os.environ, POLICYD_NO_UVLOOP="1", PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "policyd",
                "web",
                "--config",
                str(self.config),
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=log,
            cwd=self.workdir,
            env=env,
        )
        _LIVE[self.proc.pid] = self.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"policyd web exited {self.proc.returncode}:\n{self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"policyd web did not listen within {timeout} s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        _LIVE.pop(self.proc.pid, None)
        self.proc = None

    def log_text(self) -> str:
        p = self.workdir / "web.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def form_value(self, name: str) -> str:
        """The value of the first input named `name` on the page."""
        m = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)
        assert m, f"no input {name!r} on the page:\n{self.text[:2000]}"
        return m.group(1)

    def form_values(self, name: str) -> list[str]:
        return re.findall(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)


@dataclass
class Client:
    """HTTP/1.1 over loopback; cookies by name (Path=/ only); redirects are not followed."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)
    #: the local address to connect from (e.g. "127.0.0.2": another loopback client)
    source: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        u = urlsplit(self.base)
        conn = http.client.HTTPConnection(
            u.hostname or "127.0.0.1",
            u.port,
            timeout=30,
            source_address=(self.source, 0) if self.source else None,
        )
        h = dict(headers or {})
        if self.cookies and "Cookie" not in h:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            try:
                conn.request(method, path, body=body, headers=h)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (e.g. 413) and closed before reading everything
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        for raw in resp.headers.get_all("Set-Cookie") or []:
            c: SimpleCookie = SimpleCookie()
            c.load(raw)
            for name, morsel in c.items():
                if morsel["max-age"] == "0" or (morsel["expires"] and not morsel.value):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Reply(resp.status, resp.headers, data)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(
        self, path: str, fields: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, urlencode(fields or {}).encode(), h)


class MailSink:
    """An aiosmtpd SMTP server on 127.0.0.1 that keeps every message it is given."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self._cond = threading.Condition()
        self._controller: Any = None

    def start(self) -> MailSink:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                with sink._cond:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
                    sink._cond.notify_all()
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, rcpt: str, timeout: float = 15.0, after: int = 0) -> EmailMessage:
        """The first message (from index `after` on) for `rcpt`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _frm, rcpts, msg in self.messages[after:]:
                    if rcpt in rcpts:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no mail for {rcpt} within {timeout} s")
                self._cond.wait(left)

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ldap_web_config(
    slapd: Any,
    tmp: Path,
    web_port: int,
    smtp_port: int,
    web: str = "",
    verification: str = "",
    server: str | None = None,
    ldap: str = "",
) -> str:
    """A config for `policyd web` over the test slapd: LDAP directory and password login,
    verification on a SQLite file with its mail to 127.0.0.1:smtp_port."""
    pw = tmp / "bind-password"
    pw.write_text(slapd.bind_password + "\n")
    return (
        '[directory]\nbackend = "ldap"\n'
        f'[ldap]\nservers = ["{server or slapd.url}"]\nbind_dn = "{slapd.bind_dn}"\n'
        f'bind_password_file = "{pw}"\nuser_base = "ou=people,dc=example,dc=org"\n'
        + ("" if "receive_timeout" in ldap else "receive_timeout = 2\n")
        + "connect_timeout = 2\n"
        + ldap
        + "\n"
        "[verification]\nenabled = true\n"
        f'database = "{tmp / "senders.sqlite"}"\n'
        'site_name = "Example Mail"\n'
        'local_domains = ["example.org", "example.net", "carol.example"]\n'
        f'link_base_url = "http://127.0.0.1:{web_port}/confirm"\n' + verification + "\n"
        "[verification.mail]\n"
        f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp_port}\n'
        'from_address = "postmaster@example.org"\n'
        "[verification.limits]\nmail_interval_per_address = 0\n"
        f'[web]\ncookie_secure = false\ndatabase = "{tmp / "web.sqlite"}"\n' + web
    )


@contextlib.contextmanager
def ldap_web_servers(slapd: Any, tmp: Path) -> Iterator[Callable[..., WebServer]]:
    """Gives `go(web="", using=slapd, extra="", **kw)`: starts a `policyd web` on a config of
    ldap_web_config (plus the TOML `extra`), each in its own folder under tmp; all are stopped
    when the block ends."""
    made: list[WebServer] = []

    def go(web: str = "", using: Any = slapd, extra: str = "", **kw: str) -> WebServer:
        port = free_port()
        d = tmp / f"w{len(made)}"
        d.mkdir()
        cfg = ldap_web_config(using, d, port, free_port(), web=web, **kw)
        if extra:
            cfg += "\n" + extra
        w = WebServer(d, cfg, port=port)
        made.append(w)
        return w.start()

    try:
        yield go
    finally:
        for w in made:
            w.stop()


def code_and_link(msg: EmailMessage) -> tuple[str, str]:
    """The 8-digit code and the landing link in a confirmation mail."""
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    text = part.get_content()
    code = re.search(r"^\s*(\d{8})\s*$", text, re.M)
    link = re.search(r"(https?://\S+\?token=[A-Za-z0-9_-]+)", text)
    assert code and link, text
    return code.group(1), link.group(1)


def urlencoded(fields: dict[str, str]) -> str:
    return urlencode(fields)
