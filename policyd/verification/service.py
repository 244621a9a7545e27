"""The verification API (front ends: `policyd senders`, the web page). Synchronous: it blocks
on SQLite, SMTP and LDAP, so an event loop calls it in a thread with a deadline.

Every change runs in one store transaction (BEGIN IMMEDIATE): checks and updates cannot be
raced, and two confirmations of one request end with exactly one winner. With store = "ldap"
the directory write happens inside that transaction and is undone if the commit fails, so
nothing is half-written. Refusals change nothing (except a wrong code, which counts a try).
No token or code is logged or audited.
"""

from __future__ import annotations

from policyd.addresses import owned_by
from policyd.directory.base import DirectoryUnavailable
from policyd.verification import limits, states, tokens
from policyd.verification.admin import AdminOps
from policyd.verification.core import _UNAVAILABLE, Writer, WriterError, _Collect, _Deferred
from policyd.verification.normalize import in_domains
from policyd.verification.store import Row, StoreUnavailable, Tx
from policyd.verification.views import Actor, EntryView, LandingView, PendingView, Refused

__all__ = ["Actor", "Refused", "Verification", "Writer", "WriterError"]


class Verification(AdminOps):
    """Verification(config, store, mailer, directory_addresses, primary_address, clock,
    *, local_domains=None, writer=None) — see Core.__init__."""

    # -- requesting ---------------------------------------------------------------------

    def request(self, login: str, address: str, *, actor: Actor) -> PendingView:
        addr = self._address(address)
        if in_domains(addr, self.local_domains):
            raise Refused(
                "local_domain",
                "Addresses in our own domains are assigned by the administrators; ask your "
                "administrator.",
            )
        if owned_by(self._owned_in_directory(login), addr, self.rules):
            raise Refused("already_owned", "You can already send as this address.")
        self._check_foreign(login, addr)
        identity = self._identity(login)
        primary = self._primary(login)
        now = self.clock()
        token, code, secret_values = self._fresh_secrets(now)
        with self._tx() as tx:
            self._expire_due(tx, now)
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
                new = tx.by_id(rid)
                self._audit(tx, actor, "request", new, None, states.PENDING)
            else:
                rid = row.id
                tx.update(rid, states.PENDING, identity=identity, **secret_values)
                self._audit(tx, actor, "resend", row, states.PENDING, states.PENDING)
            limits.count(tx, login, addr, now, request=True)
        return self._pending_view(self._send(rid, addr, primary, code, token))

    def resend(self, login: str, address: str, *, actor: Actor) -> PendingView:
        addr = self._address(address)
        self._check_foreign(login, addr)
        identity = self._identity(login)
        primary = self._primary(login)
        now = self.clock()
        token, code, secret_values = self._fresh_secrets(now)
        with self._tx() as tx:
            self._expire_due(tx, now)
            row = tx.active(login, addr)
            if row is None or row.state != states.PENDING:
                raise Refused("not_pending", "There is no request waiting for this address.")
            limits.check_suppressed(tx, addr)
            limits.check_mail(tx, self.vc.limits, addr, now)
            states.next_state(row.state, "resend")
            tx.update(row.id, states.PENDING, identity=identity, **secret_values)
            self._audit(tx, actor, "resend", row, states.PENDING, states.PENDING)
            limits.count(tx, login, addr, now, request=False)
        return self._pending_view(self._send(row.id, addr, primary, code, token))

    # -- confirming ---------------------------------------------------------------------

    def confirm_code(self, login: str, address: str, code: str, *, actor: Actor) -> EntryView:
        addr = self._address(address)

        def body(tx: _Collect) -> Row:
            now = self.clock()
            self._expire_due(tx.tx, now)
            row = tx.tx.active(login, addr)
            if row is None or row.state != states.PENDING:
                raise Refused("not_pending", "There is no request waiting for this address.")
            assert row.code_expires is not None and row.code_salt and row.code_hash
            if now > row.code_expires:
                raise Refused("expired", "This code has expired; ask for a new mail (resend).")
            limits.check_suppressed(tx.tx, addr)
            if not tokens.code_matches(code, row.code_salt, row.code_hash):
                tries = row.tries + 1
                if tries >= self.vc.code_tries:
                    new = states.next_state(row.state, "too_many_tries")
                    tx.tx.update(row.id, row.state, state=new, tries=tries, updated=now)
                    self._audit(tx.tx, actor, "too_many_tries", row, row.state, new)
                    raise _Deferred(
                        Refused(
                            "too_many_tries",
                            "Too many wrong codes: the request was cancelled. You may ask again.",
                        )
                    )
                tx.tx.update(row.id, row.state, tries=tries)
                left = self.vc.code_tries - tries
                raise _Deferred(Refused("bad_code", f"Wrong code; {left} tries left."))
            self._verify(tx.tx, row, "code", actor, "confirm", tx.added)
            return row

        return self._run_verify(body)

    def _by_token(self, tx: Tx, token: str) -> Row:
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
        try:
            with self.store.reading() as tx:
                row = tx.by_token_hash(tokens.token_hash(token))
        except StoreUnavailable as e:
            raise Refused("store_unavailable", _UNAVAILABLE, str(e)) from None
        if row is None or row.state != states.PENDING or row.token_expires is None:
            return None
        if row.token_expires < self.clock():
            return None
        try:
            primary = self.primary_address(row.login)
        except DirectoryUnavailable:
            primary = None
        return LandingView(row.address, primary, self.vc.site_name, row.token_expires)

    def confirm_token(self, token: str, *, actor: Actor) -> EntryView:
        def body(tx: _Collect) -> Row:
            self._expire_due(tx.tx, self.clock())
            row = self._by_token(tx.tx, token)
            limits.check_suppressed(tx.tx, row.address)
            self._verify(tx.tx, row, "link", actor, "confirm", tx.added)
            return row

        return self._run_verify(body)

    def refuse_token(self, token: str, *, actor: Actor) -> None:
        with self._tx() as tx:
            now = self.clock()
            self._expire_due(tx, now)
            row = self._by_token(tx, token)
            new = states.next_state(row.state, "refuse")
            tx.update(row.id, row.state, state=new, updated=now)
            self._audit(tx, actor, "refuse", row, row.state, new)
            key = limits.address_key(row.address)
            if tx.suppress(key, now, actor.who, "not me"):
                self._audit(tx, actor, "block", None, None, None, address=key,
                            detail="This was not me")  # fmt: skip
            # Every login's waiting request for the address (any + variant) ends with it.
            for other in tx.rows(state=states.PENDING):
                if limits.address_key(other.address) == key:
                    tx.update(other.id, other.state, state=states.CANCELLED, updated=now)
                    self._audit(tx, actor, "cancel", other, other.state, states.CANCELLED,
                                detail="This was not me")  # fmt: skip

    def cancel(self, login: str, address: str, *, actor: Actor) -> None:
        addr = self._address(address)
        with self._tx() as tx:
            now = self.clock()
            self._expire_due(tx, now)
            row = tx.active(login, addr)
            if row is None or row.state != states.PENDING:
                raise Refused("not_pending", "There is no request waiting for this address.")
            tx.update(row.id, row.state, state=states.next_state(row.state, "cancel"), updated=now)
            self._audit(tx, actor, "cancel", row, row.state, states.CANCELLED)
