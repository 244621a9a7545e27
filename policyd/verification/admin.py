"""The verification API, part two: revoke, the admin overrides, listings and purge (see
service.py for the request/confirm flow; core.py for the shared machinery)."""

from __future__ import annotations

import logging
from dataclasses import replace

from policyd.addresses import candidates, owned_by
from policyd.directory.base import DirectoryUnavailable
from policyd.verification import limits, states
from policyd.verification.core import Core, WriterError, _Collect
from policyd.verification.normalize import in_domains
from policyd.verification.store import Row, StoreUnavailable
from policyd.verification.views import Actor, AuditView, EntryView, Refused

log = logging.getLogger("policyd.verification")

#: How `entries` lists a verified row that no longer counts (not a stored state: the row is
#: still "verified", and counts again if the directory changes back).
SUPERSEDED = "superseded"

_SUPPRESSED = "This address does not accept confirmation requests; ask your administrator."


class AdminOps(Core):
    def revoke(self, login: str, address: str, *, actor: Actor) -> None:
        """verified -> revoked: the address stops being owned (at once on this instance)."""
        addr = self._address(address)
        removed: list[Row] = []
        committed = False
        try:
            with self._tx() as tx:
                now = self.clock()
                row = tx.active(login, addr)
                if row is None or row.state != states.VERIFIED:
                    raise Refused("not_verified", "This address is not among the verified ones.")
                if self.writer is not None:
                    try:
                        if self.writer.delete(login, addr, row.identity):
                            removed.append(row)
                    except WriterError as e:
                        raise Refused(
                            "store_unavailable",
                            "The address could not be removed from the directory; it is still "
                            "verified. Try again later.",
                            str(e),
                        ) from None
                new = states.next_state(row.state, "revoke")
                tx.update(row.id, row.state, state=new, updated=now)
                self._audit(tx, actor, "revoke", row, row.state, new)
            committed = True
        finally:
            if not committed:
                self._undo_writes(removed, added_them=False)

    def add_unverified(self, login: str, address: str, *, actor: Actor) -> EntryView:
        """An admin's override (`senders add --no-verify`): verified without a mail, audited."""
        addr = self._address(address)
        if in_domains(addr, self.local_domains):
            raise Refused(
                "local_domain", "Addresses in our own domains are assigned in the directory."
            )
        if owned_by(self._owned_in_directory(login), addr, self.rules):
            raise Refused("already_owned", "This login can already send as this address.")
        self._check_foreign(login, addr)
        identity = self._identity(login)  # (a login the directory does not know: refused)

        def body(tx: _Collect) -> Row:
            now = self.clock()
            self._expire_due(tx.tx, now)
            if limits.is_suppressed(tx.tx, addr):
                raise Refused("suppressed", _SUPPRESSED + " (unblock it first)")
            row = tx.tx.active(login, addr)
            if row is not None and row.state == states.VERIFIED:
                raise Refused("already_owned", "This login can already send as this address.")
            if row is None:
                rid = tx.tx.insert(
                    login=login, address=addr, state=states.PENDING, created=now, updated=now,
                    identity=identity,
                )  # fmt: skip
            else:
                rid = row.id
                tx.tx.update(rid, row.state, identity=identity)
            row = tx.tx.by_id(rid)
            assert row is not None
            self._verify(tx.tx, row, "admin", actor, "add_unverified", tx.added)
            return row

        return self._run_verify(body)

    def block(self, address: str, *, actor: Actor) -> None:
        """Put the address (without its + extension: all its variants) on the suppression
        list; requests waiting for it are cancelled."""
        addr = limits.address_key(self._address(address))
        with self._tx() as tx:
            now = self.clock()
            if not tx.suppress(addr, now, actor.who, "blocked by an admin"):
                raise Refused("already_blocked", "This address is already blocked.")
            self._audit(tx, actor, "block", None, None, None, address=addr)
            for row in tx.rows(state=states.PENDING):
                if limits.address_key(row.address) == addr:
                    tx.update(row.id, row.state, state=states.CANCELLED, updated=now)
                    self._audit(tx, actor, "cancel", row, row.state, states.CANCELLED,
                                detail="address blocked")  # fmt: skip

    def unblock(self, address: str, *, actor: Actor) -> None:
        addr = self._address(address)
        with self._tx() as tx:
            key = limits.address_key(addr)
            if not (tx.unsuppress(key) | (key != addr and tx.unsuppress(addr))):
                raise Refused("not_blocked", "This address is not blocked.")
            self._audit(tx, actor, "unblock", None, None, None, address=addr)

    def blocked(self) -> list[tuple[str, float, str, str]]:
        """(address, since, by whom, why) of the suppression list."""
        try:
            with self.store.reading() as tx:
                return tx.suppressed()
        except StoreUnavailable as e:
            raise Refused(
                "store_unavailable", "The list cannot be read right now.", str(e)
            ) from None

    def entries(self, login: str | None = None, state: str | None = None) -> list[EntryView]:
        """Requests and verified addresses (expired ones are marked expired first, when the
        store can be written; a read-only store is listed as it is)."""
        try:
            with self._tx() as tx:
                self._expire_due(tx, self.clock())
        except Refused:
            pass
        try:
            with self.store.reading() as tx:
                rows = tx.rows(login, state)
        except StoreUnavailable as e:
            raise Refused(
                "store_unavailable", "The list cannot be read right now.", str(e)
            ) from None
        identities: dict[str, frozenset[str]] = {}
        out = []
        checking = True
        for r in rows:
            view = self._entry_view(r)
            why = None
            if r.state == states.VERIFIED and checking:
                try:
                    why = self._superseded(r, identities)
                except DirectoryUnavailable as e:
                    log.warning(
                        "sender verification: list: directory unavailable, verified addresses "
                        "not checked: %s", e,
                    )  # fmt: skip
                    checking = False
            out.append(replace(view, state=SUPERSEDED, why=why) if why else view)
        return out

    def _superseded(self, row: Row, identities: dict[str, frozenset[str]]) -> str | None:
        """Why a verified row no longer counts (the same rules as the verified source's, see
        verification/lookups.py), or None while it does. Raises DirectoryUnavailable."""
        if row.login not in identities:
            identities[row.login] = self.directory.identity_of(row.login)
        identity = identities[row.login]
        if not identity or (row.identity is not None and row.identity not in identity):
            return "the login's directory entry is gone, or is another entry now"
        if in_domains(row.address, self.local_domains):
            return "in verification.local_domains"
        for key in candidates(row.address, self.rules):
            if self.directory.owners_of(key) - {row.login}:
                return f"the directory owns {key}"
        return None

    def audit(self, login: str | None = None) -> list[AuditView]:
        try:
            with self.store.reading() as tx:
                rows = tx.audit_rows(login)
        except StoreUnavailable as e:
            raise Refused(
                "store_unavailable", "The audit log cannot be read now.", str(e)
            ) from None
        return rows

    def purge(self, older_than_days: float, *, actor: Actor) -> int:
        """Delete expired, cancelled and refused requests older than that (the audit log is
        kept). Returns how many."""
        with self._tx() as tx:
            now = self.clock()
            self._expire_due(tx, now)
            n = tx.purge(now - older_than_days * 86400.0, sorted(states.PURGEABLE))
            self._audit(tx, actor, "purge", None, None, None,
                        detail=f"{n} request(s) older than {older_than_days:g} days")  # fmt: skip
        return n
