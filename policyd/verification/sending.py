"""The confirmation mail of the verification API: fresh secrets for a request, and sending the
mail with its success or error recorded on the request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policyd.config.verification import VerificationConfig
from policyd.verification import states, tokens
from policyd.verification.ledger import Ledger
from policyd.verification.mail import Confirmation, Mailer, MailError, build_message, envelope_from
from policyd.verification.store import Row
from policyd.verification.views import Actor, Refused


@dataclass(frozen=True)
class ConfirmationMail:
    vc: VerificationConfig
    mailer: Mailer
    ledger: Ledger
    clock: Callable[[], float]

    def fresh_secrets(self, now: float) -> tuple[str, str, dict[str, object]]:
        """(link token, code, the row's new values: their hashes and expiries)."""
        token, th = tokens.new_token()
        code, salt, ch = tokens.new_code()
        values: dict[str, object] = dict(
            token_hash=th, token_expires=now + self.vc.token_ttl, code_salt=salt, code_hash=ch,
            code_expires=now + self.vc.code_ttl, tries=0, updated=now,
        )  # fmt: skip
        return token, code, values

    def send(self, rid: int, address: str, primary: str, code: str, token: str) -> Row:
        """Send the mail; record success or the error. Raises Refused("mail_failed")."""
        now = self.clock()
        sep = "&" if "?" in self.vc.link_base_url else "?"
        link = f"{self.vc.link_base_url}{sep}token={token}"
        msg = build_message(self.vc, Confirmation(address, primary, code, link, now))
        try:
            self.mailer.send(msg, envelope_from(self.vc), address)
            error = None
        except MailError as e:
            error = str(e)
        with self.ledger.transaction() as tx:
            row = tx.by_id(rid)
            assert row is not None
            if error is None:
                tx.update(rid, states.PENDING, mail_sent=now, last_error=None)
            else:
                tx.update(rid, states.PENDING, last_error=error)
                self.ledger.audit(
                    tx, Actor("system"), "mail_failed", row, row.state, row.state, detail=error
                )
            row = tx.by_id(rid)
            assert row is not None
        if error is not None:
            raise Refused(
                "mail_failed",
                "The request is saved, but the confirmation mail could not be sent right now; "
                "ask for it again (resend) later.",
                error,
            )
        return row
