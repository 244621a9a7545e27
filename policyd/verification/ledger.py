"""The store side of the verification API: its transactions (a store failure is a refusal),
the audit trail and its log lines, expiry, and the views it hands out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from policyd.verification import states
from policyd.verification.limits import address_key
from policyd.verification.store import Row, Store, StoreUnavailable, Tx
from policyd.verification.views import Actor, EntryView, PendingView, Refused

log = logging.getLogger("policyd.verification")

T = TypeVar("T")

UNAVAILABLE = "The address list cannot be changed right now; try again later."
LIST_UNREADABLE = "The list cannot be read right now."


@dataclass(frozen=True)
class Ledger:
    """Transactions, audit, expiry and views over one Store."""

    store: Store
    clock: Callable[[], float]
    #: the From: of the confirmation mail, shown with a pending request
    mail_from: str

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One write transaction; what it logged is logged once it committed."""
        try:
            with self.store.transaction() as tx:
                yield tx
        except StoreUnavailable as e:
            log.warning("verification store: %s", e)
            raise Refused("store_unavailable", UNAVAILABLE, str(e)) from None
        for fmt, args in tx.logs:  # (only what was committed is logged)
            log.info(fmt, *args)

    def read(self, what: Callable[[Tx], T], unavailable: str = UNAVAILABLE) -> T:
        """what(tx) in a read transaction; Refused("store_unavailable", unavailable)."""
        try:
            with self.store.reading() as tx:
                return what(tx)
        except StoreUnavailable as e:
            raise Refused("store_unavailable", unavailable, str(e)) from None

    def audit(
        self,
        tx: Tx,
        actor: Actor,
        event: str,
        row: Row | None,
        old: str | None,
        new: str | None,
        *,
        login: str | None = None,
        address: str | None = None,
        detail: str | None = None,
    ) -> None:
        login = row.login if row else login
        address = row.address if row else address
        tx.audit(
            at=self.clock(), actor=actor.who, ip=actor.ip, event=event, login=login,
            address=address, request_id=row.id if row else None, old_state=old, new_state=new,
            detail=detail,
        )  # fmt: skip
        tx.logs.append((
            "sender verification: %s %s for %s: %s -> %s by %s%s",
            (event, address, login, old or "-", new or "-", actor.who,
             f" from {actor.ip}" if actor.ip else ""),
        ))  # fmt: skip

    def expire_due(self, tx: Tx, now: float) -> None:
        for row in tx.due_to_expire(now):
            if tx.update(row.id, states.PENDING, state=states.EXPIRED, updated=now):
                self.audit(tx, Actor("system"), "expire", row, states.PENDING, states.EXPIRED)

    def cancel_pending_of(self, tx: Tx, key: str, actor: Actor, why: str, now: float) -> None:
        """Every login's waiting request for the address key (any + variant) ends."""
        for row in tx.rows(state=states.PENDING):
            if address_key(row.address) == key:
                tx.update(row.id, row.state, state=states.CANCELLED, updated=now)
                self.audit(tx, actor, "cancel", row, row.state, states.CANCELLED, detail=why)

    def pending_view(self, row: Row) -> PendingView:
        return PendingView(
            login=row.login, address=row.address, state=row.state, created=row.created,
            code_expires=row.code_expires, link_expires=row.token_expires,
            mail_sent=row.mail_sent, last_error=row.last_error, mail_from=self.mail_from,
        )  # fmt: skip

    @staticmethod
    def entry_view(row: Row) -> EntryView:
        return EntryView(
            login=row.login, address=row.address, state=row.state, method=row.method,
            created=row.created, updated=row.updated, verified_at=row.verified_at,
            code_expires=row.code_expires if row.state == states.PENDING else None,
            link_expires=row.token_expires if row.state == states.PENDING else None,
            last_error=row.last_error,
        )  # fmt: skip

    def entry(self, rid: int) -> EntryView:
        row = self.read(lambda tx: tx.by_id(rid))
        assert row is not None
        return self.entry_view(row)
