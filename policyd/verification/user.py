"""The user's flow of the verification API: request an address, get the mail again, confirm it
by code or link (or refuse it: "this was not me"), cancel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policyd.config.verification import VerificationConfig
from policyd.verification import limits, states, tokens
from policyd.verification.ledger import Ledger
from policyd.verification.ownership import LOCAL_DOMAIN, Ownership
from policyd.verification.sending import ConfirmationMail
from policyd.verification.store import Row, Tx
from policyd.verification.views import Actor, EntryView, LandingView, PendingView, Refused
from policyd.verification.writes import Deferred, Verifier, Verifying

_NOT_PENDING = "There is no request waiting for this address."


@dataclass(frozen=True)
class UserFlow:
    vc: VerificationConfig
    ownership: Ownership
    ledger: Ledger
    verifier: Verifier
    mail: ConfirmationMail
    clock: Callable[[], float]

    # -- requesting ---------------------------------------------------------------------

    def request(self, login: str, address: str, *, actor: Actor) -> PendingView:
        own = self.ownership
        addr = own.address(address)
        if own.is_local(addr):
            raise Refused("local_domain", LOCAL_DOMAIN)
        if own.already_owns(login, addr):
            raise Refused("already_owned", "You can already send as this address.")

        def record(tx: Tx, now: float, identity: str, secret_values: dict[str, object]) -> int:
            limits.check_suppressed(tx, addr)
            row = tx.active(login, addr)
            if row is not None and row.state == states.VERIFIED:
                raise Refused("already_owned", "You can already send as this address.")
            limits.check_login(tx, self.vc.limits, login, now, new=row is None)
            limits.check_mail(tx, self.vc.limits, addr, now)
            if row is None:
                rid = tx.insert(
                    login=login, address=addr, state=states.next_state(None, "request"),
                    created=now, last_error=None, identity=identity, **secret_values,
                )  # fmt: skip
                self.ledger.audit(tx, actor, "request", tx.by_id(rid), None, states.PENDING)
            else:
                rid = row.id
                self._renew(tx, row, identity, secret_values, actor)
            limits.count(tx, login, addr, now, request=True)
            return rid

        return self._with_new_mail(login, addr, record)

    def resend(self, login: str, address: str, *, actor: Actor) -> PendingView:
        addr = self.ownership.address(address)

        def record(tx: Tx, now: float, identity: str, secret_values: dict[str, object]) -> int:
            row = tx.active(login, addr)
            if row is None or row.state != states.PENDING:
                raise Refused("not_pending", _NOT_PENDING)
            limits.check_suppressed(tx, addr)
            limits.check_mail(tx, self.vc.limits, addr, now)
            states.next_state(row.state, "resend")
            self._renew(tx, row, identity, secret_values, actor)
            limits.count(tx, login, addr, now, request=False)
            return row.id

        return self._with_new_mail(login, addr, record)

    def _with_new_mail(
        self, login: str, addr: str, record: Callable[[Tx, float, str, dict[str, object]], int]
    ) -> PendingView:
        """The directory checks, then record(tx, now, identity, new secret values) -> the
        request's id in one transaction (what is due expired first), then the mail."""
        own = self.ownership
        own.check_foreign(login, addr)
        identity, primary = own.identity(login), own.primary(login)
        now = self.clock()
        token, code, secret_values = self.mail.fresh_secrets(now)
        with self.ledger.transaction() as tx:
            self.ledger.expire_due(tx, now)
            rid = record(tx, now, identity, secret_values)
        return self.ledger.pending_view(self.mail.send(rid, addr, primary, code, token))

    def _renew(
        self, tx: Tx, row: Row, identity: str, secret_values: dict[str, object], actor: Actor
    ) -> None:
        """A waiting request gets new secrets (the old code and link stop working)."""
        tx.update(row.id, states.PENDING, identity=identity, **secret_values)
        self.ledger.audit(tx, actor, "resend", row, states.PENDING, states.PENDING)

    # -- confirming ---------------------------------------------------------------------

    def confirm_code(self, login: str, address: str, code: str, *, actor: Actor) -> EntryView:
        addr = self.ownership.address(address)

        def body(v: Verifying) -> Row:
            now = self.clock()
            self.ledger.expire_due(v.tx, now)
            row = v.tx.active(login, addr)
            if row is None or row.state != states.PENDING:
                raise Refused("not_pending", _NOT_PENDING)
            assert row.code_expires is not None and row.code_salt and row.code_hash
            if now > row.code_expires:
                raise Refused("expired", "This code has expired; ask for a new mail (resend).")
            limits.check_suppressed(v.tx, addr)
            if not tokens.code_matches(code, row.code_salt, row.code_hash):
                raise Deferred(self._wrong_code(v.tx, row, now, actor))
            self.verifier.verify(v, row, "code", actor, "confirm")
            return row

        return self.verifier.run(body)

    def _wrong_code(self, tx: Tx, row: Row, now: float, actor: Actor) -> Refused:
        """Count the try (the last one cancels the request); the refusal to raise after the
        commit."""
        tries = row.tries + 1
        if tries >= self.vc.code_tries:
            new = states.next_state(row.state, "too_many_tries")
            tx.update(row.id, row.state, state=new, tries=tries, updated=now)
            self.ledger.audit(tx, actor, "too_many_tries", row, row.state, new)
            return Refused(
                "too_many_tries",
                "Too many wrong codes: the request was cancelled. You may ask again.",
            )
        tx.update(row.id, row.state, tries=tries)
        return Refused("bad_code", f"Wrong code; {self.vc.code_tries - tries} tries left.")

    @staticmethod
    def _by_token(tx: Tx, token: str) -> Row:
        row = tx.by_token_hash(tokens.token_hash(token)) if tokens.plausible_token(token) else None
        if row is None:
            raise Refused("unknown_token", "This link is not valid (it may have been replaced).")
        if row.state == states.EXPIRED:
            raise Refused("expired", "This link has expired; ask for a new mail.")
        if row.state != states.PENDING:
            raise Refused("not_pending", "This link was already used.")
        return row

    def landing(self, token: str) -> LandingView | None:
        """What the token would confirm; None if it would confirm nothing. Changes nothing."""
        if not tokens.plausible_token(token):
            return None
        row = self.ledger.read(lambda tx: tx.by_token_hash(tokens.token_hash(token)))
        if row is None or row.state != states.PENDING or row.token_expires is None:
            return None
        if row.token_expires < self.clock():
            return None
        primary = self.ownership.primary_or_none(row.login)
        return LandingView(row.address, primary, self.vc.site_name, row.token_expires)

    def confirm_token(self, token: str, *, actor: Actor) -> EntryView:
        def body(v: Verifying) -> Row:
            self.ledger.expire_due(v.tx, self.clock())
            row = self._by_token(v.tx, token)
            limits.check_suppressed(v.tx, row.address)
            self.verifier.verify(v, row, "link", actor, "confirm")
            return row

        return self.verifier.run(body)

    def refuse_token(self, token: str, *, actor: Actor) -> None:
        with self.ledger.transaction() as tx:
            now = self.clock()
            self.ledger.expire_due(tx, now)
            row = self._by_token(tx, token)
            new = states.next_state(row.state, "refuse")
            tx.update(row.id, row.state, state=new, updated=now)
            self.ledger.audit(tx, actor, "refuse", row, row.state, new)
            key = limits.address_key(row.address)
            if tx.suppress(key, now, actor.who, "not me"):
                self.ledger.audit(tx, actor, "block", None, None, None, address=key,
                                  detail="This was not me")  # fmt: skip
            self.ledger.cancel_pending_of(tx, key, actor, "This was not me", now)

    def cancel(self, login: str, address: str, *, actor: Actor) -> None:
        addr = self.ownership.address(address)
        with self.ledger.transaction() as tx:
            now = self.clock()
            self.ledger.expire_due(tx, now)
            row = tx.active(login, addr)
            if row is None or row.state != states.PENDING:
                raise Refused("not_pending", _NOT_PENDING)
            tx.update(row.id, row.state, state=states.next_state(row.state, "cancel"), updated=now)
            self.ledger.audit(tx, actor, "cancel", row, row.state, states.CANCELLED)
