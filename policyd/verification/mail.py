"""The confirmation mail, and handing it to the local Postfix.

The message carries no text a user typed: its To: is the bare normalised address (no display
name), and the subject and body are the configured templates filled with values that come from
us (site name, the login's primary address as the directory has it, the time, the code, the
link). Headers: Auto-Submitted: auto-generated, a Message-ID, our bounce address as the
envelope sender.
"""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Protocol

from policyd.commands import CommandError, run_command
from policyd.config.verification import VerificationConfig


class MailError(Exception):
    """The mail could not be handed over. The message is for a person (no secrets in it)."""


@dataclass(frozen=True)
class Confirmation:
    """What goes into one confirmation mail (all of it ours, none of it typed by a user)."""

    to: str
    primary_address: str
    code: str
    link: str
    at: float


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def build_message(vc: VerificationConfig, c: Confirmation) -> EmailMessage:
    m = vc.mail
    msg = EmailMessage(policy=email.policy.SMTP)
    local, _, domain = m.from_address.rpartition("@")
    msg["From"] = Address(display_name=vc.site_name, username=local, domain=domain)
    to_local, _, to_domain = c.to.rpartition("@")
    msg["To"] = Address(username=to_local, domain=to_domain)
    msg["Subject"] = m.subject.format(site_name=vc.site_name)
    msg["Date"] = format_datetime(datetime.fromtimestamp(c.at, tz=UTC))
    msg["Message-ID"] = make_msgid(idstring="policyd-verify", domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "bulk"
    body = m.body.format(
        site_name=vc.site_name,
        primary_address=c.primary_address,
        time=_when(c.at),
        code=c.code,
        link=c.link,
        code_minutes=f"{vc.code_ttl / 60:g}",
        link_hours=f"{vc.token_ttl / 3600:g}",
    )
    # 7bit when it can be (the site name or primary address may not be ASCII): the code and
    # the link stay readable as they are, for people and for the tests.
    plain = body.isascii() and all(len(line) < 990 for line in body.splitlines())
    msg.set_content(body, charset="utf-8", cte="7bit" if plain else "quoted-printable")
    return msg


class Mailer(Protocol):
    def send(self, msg: EmailMessage, envelope_from: str, to: str) -> None:
        """Hand the message over, or raise MailError."""
        ...


class SmtpMailer:
    """SMTP to the local Postfix (default 127.0.0.1:25)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def send(self, msg: EmailMessage, envelope_from: str, to: str) -> None:
        where = f"{self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as s:
                s.ehlo_or_helo_if_needed()
                refused = s.send_message(msg, from_addr=envelope_from, to_addrs=[to])
            if refused:
                raise MailError(f"the mail server at {where} refused the recipient")
        except smtplib.SMTPResponseException as e:
            text = (
                e.smtp_error.decode("utf-8", "replace")
                if isinstance(e.smtp_error, bytes)
                else str(e.smtp_error)
            )
            raise MailError(
                f"the mail server at {where} answered {e.smtp_code} {text[:200]}"
            ) from None
        except smtplib.SMTPRecipientsRefused as e:
            codes = ", ".join(f"{c}" for c, _ in e.recipients.values())
            raise MailError(f"the mail server at {where} refused the recipient ({codes})") from None
        except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as e:
            raise MailError(
                f"cannot submit to the mail server at {where}: {e or type(e).__name__}"
            ) from None


class SendmailMailer:
    """`/usr/sbin/sendmail -t -i` (the configured command) with `-f <bounce address>`."""

    def __init__(self, command: tuple[str, ...], timeout: float) -> None:
        self.command, self.timeout = command, timeout

    def send(self, msg: EmailMessage, envelope_from: str, to: str) -> None:
        cmd = [*self.command, "-f", envelope_from]
        local = msg.as_bytes(policy=msg.policy.clone(linesep="\n"))  # local: LF
        try:
            run_command(cmd, timeout=self.timeout, stdin=local)
        except CommandError as e:
            raise MailError(str(e)) from None


def make_mailer(vc: VerificationConfig) -> Mailer:
    m = vc.mail
    if m.submission == "sendmail":
        return SendmailMailer(m.sendmail_command, m.smtp_timeout)
    return SmtpMailer(m.smtp_host, m.smtp_port, m.smtp_timeout)


def envelope_from(vc: VerificationConfig) -> str:
    return vc.mail.bounce_address or vc.mail.from_address
