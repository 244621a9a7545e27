"""The verification API (front ends: `policyd senders`, the web page). Synchronous: it blocks
on SQLite, SMTP and LDAP, so an event loop calls it in a thread with a deadline.

Every change runs in one store transaction (BEGIN IMMEDIATE): checks and updates cannot be
raced, and two confirmations of one request end with exactly one winner. With store = "ldap"
the directory write happens inside that transaction and is undone if the commit fails, so
nothing is half-written. Refusals change nothing (except a wrong code, which counts a try).
No token or code is logged or audited.

`Verification` is put together from parts with one job each: Ownership (what the directory
says about a login and an address), Ledger (store transactions, audit, expiry, views),
Verifier (the verify step and its directory write), ConfirmationMail, and the two sets of
operations over them: UserFlow and AdminOps.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from policyd.config import Config
from policyd.directory.base import Directory
from policyd.verification.admin import AdminOps
from policyd.verification.ledger import Ledger
from policyd.verification.mail import Mailer
from policyd.verification.ownership import Ownership
from policyd.verification.sending import ConfirmationMail
from policyd.verification.store import Store
from policyd.verification.user import UserFlow
from policyd.verification.views import (
    Actor,
    AuditView,
    EntryView,
    LandingView,
    PendingView,
    Refused,
)
from policyd.verification.writes import Verifier, Writer, WriterError

__all__ = ["Actor", "Refused", "Verification", "Writer", "WriterError"]


class Verification:
    """The API: the user's operations (request ... cancel) and the admin's (revoke ...
    purge), over one store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        mailer: Mailer,
        directory_addresses: Callable[[str], frozenset[str]],
        primary_address: Callable[[str], str | None],
        clock: Callable[[], float] = time.time,
        *,
        local_domains: frozenset[str] | None = None,
        writer: Writer | None = None,
        directory: Directory,
    ) -> None:
        vc = config.verification
        self.store = store
        ownership = Ownership(
            config.addresses.rules(),
            frozenset(vc.local_domains) if local_domains is None else local_domains,
            directory,
            directory_addresses,
            primary_address,
        )
        ledger = Ledger(store, clock, vc.mail.from_address)
        verifier = Verifier(ledger, ownership, writer, clock)
        mail = ConfirmationMail(vc, mailer, ledger, clock)
        self._user = UserFlow(vc, ownership, ledger, verifier, mail, clock)
        self._admin = AdminOps(ownership, ledger, verifier, clock)

    def close(self) -> None:
        self.store.close()

    # -- the user's -------------------------------------------------------------------

    def request(self, login: str, address: str, *, actor: Actor) -> PendingView:
        return self._user.request(login, address, actor=actor)

    def resend(self, login: str, address: str, *, actor: Actor) -> PendingView:
        return self._user.resend(login, address, actor=actor)

    def confirm_code(self, login: str, address: str, code: str, *, actor: Actor) -> EntryView:
        return self._user.confirm_code(login, address, code, actor=actor)

    def landing(self, token: str) -> LandingView | None:
        """What the token would confirm; None if it would confirm nothing. Changes nothing."""
        return self._user.landing(token)

    def confirm_token(self, token: str, *, actor: Actor) -> EntryView:
        return self._user.confirm_token(token, actor=actor)

    def refuse_token(self, token: str, *, actor: Actor) -> None:
        self._user.refuse_token(token, actor=actor)

    def cancel(self, login: str, address: str, *, actor: Actor) -> None:
        self._user.cancel(login, address, actor=actor)

    # -- the admin's (and revoke: the user's too) ---------------------------------------

    def revoke(self, login: str, address: str, *, actor: Actor) -> None:
        self._admin.revoke(login, address, actor=actor)

    def add_unverified(self, login: str, address: str, *, actor: Actor) -> EntryView:
        return self._admin.add_unverified(login, address, actor=actor)

    def block(self, address: str, *, actor: Actor) -> None:
        self._admin.block(address, actor=actor)

    def unblock(self, address: str, *, actor: Actor) -> None:
        self._admin.unblock(address, actor=actor)

    def blocked(self) -> list[tuple[str, float, str, str]]:
        return self._admin.blocked()

    def entries(self, login: str | None = None, state: str | None = None) -> list[EntryView]:
        return self._admin.entries(login, state)

    def audit(self, login: str | None = None) -> list[AuditView]:
        return self._admin.audit(login)

    def purge(self, older_than_days: float, *, actor: Actor) -> int:
        return self._admin.purge(older_than_days, actor=actor)
