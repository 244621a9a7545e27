"""The admin's operations of the verification API: revoke, the override without a mail, the
suppression list, listings and purge (the user's flow is user.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from policyd.directory.base import DirectoryUnavailable
from policyd.verification import limits, states
from policyd.verification.ledger import LIST_UNREADABLE, Ledger
from policyd.verification.ownership import Ownership
from policyd.verification.store import Row
from policyd.verification.views import Actor, AuditView, EntryView, Refused
from policyd.verification.writes import Verifier, Verifying

log = logging.getLogger("policyd.verification")

#: How `entries` lists a verified row that no longer counts (not a stored state: the row is
#: still "verified", and counts again if the directory changes back).
SUPERSEDED = "superseded"

_SUPPRESSED = "This address does not accept confirmation requests; ask your administrator."


@dataclass(frozen=True)
class AdminOps:
    ownership: Ownership
    ledger: Ledger
    verifier: Verifier
    clock: Callable[[], float]

    def revoke(self, login: str, address: str, *, actor: Actor) -> None:
        """verified -> revoked: the address stops being owned (at once on this instance)."""
        addr = self.ownership.address(address)
        with self.verifier.removing() as remove, self.ledger.transaction() as tx:
            now = self.clock()
            row = tx.active(login, addr)
            if row is None or row.state != states.VERIFIED:
                raise Refused("not_verified", "This address is not among the verified ones.")
            remove(row)
            new = states.next_state(row.state, "revoke")
            tx.update(row.id, row.state, state=new, updated=now)
            self.ledger.audit(tx, actor, "revoke", row, row.state, new)

    def add_unverified(self, login: str, address: str, *, actor: Actor) -> EntryView:
        """An admin's override (`senders add --no-verify`): verified without a mail, audited."""
        own = self.ownership
        addr = own.address(address)
        if own.is_local(addr):
            raise Refused(
                "local_domain", "Addresses in our own domains are assigned in the directory."
            )
        if own.already_owns(login, addr):
            raise Refused("already_owned", "This login can already send as this address.")
        own.check_foreign(login, addr)
        identity = own.identity(login)  # (a login the directory does not know: refused)

        def body(v: Verifying) -> Row:
            now = self.clock()
            self.ledger.expire_due(v.tx, now)
            if limits.is_suppressed(v.tx, addr):
                raise Refused("suppressed", _SUPPRESSED + " (unblock it first)")
            row = v.tx.active(login, addr)
            if row is not None and row.state == states.VERIFIED:
                raise Refused("already_owned", "This login can already send as this address.")
            if row is None:
                rid = v.tx.insert(
                    login=login, address=addr, state=states.PENDING, created=now, updated=now,
                    identity=identity,
                )  # fmt: skip
            else:
                rid = row.id
                v.tx.update(rid, row.state, identity=identity)
            row = v.tx.by_id(rid)
            assert row is not None
            self.verifier.verify(v, row, "admin", actor, "add_unverified")
            return row

        return self.verifier.run(body)

    def block(self, address: str, *, actor: Actor) -> None:
        """Put the address (without its + extension: all its variants) on the suppression
        list; requests waiting for it are cancelled."""
        addr = limits.address_key(self.ownership.address(address))
        with self.ledger.transaction() as tx:
            now = self.clock()
            if not tx.suppress(addr, now, actor.who, "blocked by an admin"):
                raise Refused("already_blocked", "This address is already blocked.")
            self.ledger.audit(tx, actor, "block", None, None, None, address=addr)
            self.ledger.cancel_pending_of(tx, addr, actor, "address blocked", now)

    def unblock(self, address: str, *, actor: Actor) -> None:
        addr = self.ownership.address(address)
        with self.ledger.transaction() as tx:
            key = limits.address_key(addr)
            if not (tx.unsuppress(key) | (key != addr and tx.unsuppress(addr))):
                raise Refused("not_blocked", "This address is not blocked.")
            self.ledger.audit(tx, actor, "unblock", None, None, None, address=addr)

    def blocked(self) -> list[tuple[str, float, str, str]]:
        """(address, since, by whom, why) of the suppression list."""
        return self.ledger.read(lambda tx: tx.suppressed(), LIST_UNREADABLE)

    def entries(self, login: str | None = None, state: str | None = None) -> list[EntryView]:
        """Requests and verified addresses (expired ones are marked expired first, when the
        store can be written; a read-only store is listed as it is)."""
        try:
            with self.ledger.transaction() as tx:
                self.ledger.expire_due(tx, self.clock())
        except Refused:
            pass
        rows = self.ledger.read(lambda tx: tx.rows(login, state), LIST_UNREADABLE)
        identities: dict[str, frozenset[str]] = {}
        out = []
        checking = True
        for r in rows:
            view = self.ledger.entry_view(r)
            why = None
            if r.state == states.VERIFIED and checking:
                try:
                    why = self.ownership.superseded(r, identities)
                except DirectoryUnavailable as e:
                    log.warning(
                        "sender verification: list: directory unavailable, verified addresses "
                        "not checked: %s", e,
                    )  # fmt: skip
                    checking = False
            out.append(replace(view, state=SUPERSEDED, why=why) if why else view)
        return out

    def audit(self, login: str | None = None) -> list[AuditView]:
        return self.ledger.read(
            lambda tx: tx.audit_rows(login), "The audit log cannot be read now."
        )

    def purge(self, older_than_days: float, *, actor: Actor) -> int:
        """Delete expired, cancelled and refused requests older than that (the audit log is
        kept). Returns how many."""
        with self.ledger.transaction() as tx:
            now = self.clock()
            self.ledger.expire_due(tx, now)
            n = tx.purge(now - older_than_days * 86400.0, sorted(states.PURGEABLE))
            why = f"{n} request(s) older than {older_than_days:g} days"
            self.ledger.audit(tx, actor, "purge", None, None, None, detail=why)
        return n
