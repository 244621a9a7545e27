"""Notifications to the admin ([quotas] notify), and with `notify_user` to the login itself
when it is a mail address: a login suspended, a login over a quota for the first time in a
period. Through the same submission path as the verification mail ([verification.mail]: SMTP
to the local Postfix, or sendmail), off the event loop, never blocking or failing a decision:
a mail that cannot be handed over is logged."""

from __future__ import annotations

import asyncio
import email.policy
import logging
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Final

from policyd.verification.mail import Mailer, MailError, envelope_from, make_mailer

if TYPE_CHECKING:
    from policyd.config import Config

log: Final = logging.getLogger("policyd.quotas")


class Notifier:
    def __init__(self, config: Config, mailer: Mailer | None = None) -> None:
        vc = config.verification
        self.to = config.quotas.notify
        self.to_user = config.quotas.notify_user
        self.from_address = vc.mail.from_address
        self.envelope_from = envelope_from(vc)
        self.timeout = vc.mail.smtp_timeout + 5
        self.mailer = mailer or make_mailer(vc)
        #: mails handed over (a metric, and for tests)
        self.sent = 0

    def recipients(self, login: str) -> list[str]:
        """The admin's address, and the login's own when `notify_user` and it is an address."""
        out = [self.to] if self.to else []
        local, at, domain = login.rpartition("@")
        if self.to_user and at and local and "." in domain and login.isprintable():
            if " " not in login and "@" not in local and login not in out:
                out.append(login)
        return out

    def message(self, subject: str, text: str, to: str = "") -> EmailMessage:
        msg = EmailMessage(policy=email.policy.SMTP)
        local, _, domain = self.from_address.rpartition("@")
        msg["From"] = Address(display_name="policyd", username=local, domain=domain)
        to_local, _, to_domain = (to or self.to).rpartition("@")
        msg["To"] = Address(username=to_local, domain=to_domain)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(datetime.now(tz=UTC))
        msg["Message-ID"] = make_msgid(idstring="policyd-quota", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text, charset="utf-8")
        return msg

    async def __call__(self, login: str, subject: str, text: str) -> None:
        loop = asyncio.get_running_loop()
        for to in self.recipients(login):
            try:
                msg = self.message(subject, text, to)
                await asyncio.wait_for(
                    loop.run_in_executor(None, self.mailer.send, msg, self.envelope_from, to),
                    self.timeout,
                )
            except (MailError, TimeoutError, ValueError) as e:
                log.warning("notification about %s to %s not sent: %s", login, to, str(e))
                continue
            self.sent += 1
            log.info("notification sent to=%s login=%s subject=%s", to, login, subject)
