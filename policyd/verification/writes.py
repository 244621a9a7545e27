"""The verify step and its directory write (store = "ldap"): pending -> verified inside the
store transaction, the directory value written first and taken back when the transaction does
not commit; revoke's delete the same way round."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from policyd.verification import states
from policyd.verification.ledger import Ledger
from policyd.verification.ownership import Ownership
from policyd.verification.store import Row, Tx
from policyd.verification.views import Actor, EntryView, Refused

log = logging.getLogger("policyd.verification")


class WriterError(Exception):
    """The directory write failed (bind refused, server down, rights). For an admin's eyes."""


class Writer(Protocol):
    """Where verified addresses go with store = "ldap". True: changed; False: already so.
    `identity` (the directory identity recorded with the request, see Directory.identity_of)
    names the entry: a delete whose entry is gone changes nothing and says False."""

    def add(self, login: str, address: str, identity: str | None = None) -> bool: ...

    def delete(self, login: str, address: str, identity: str | None = None) -> bool: ...


class Deferred(Exception):
    """A refusal raised only after the transaction that recorded it was committed."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.message)
        self.refused = refused


class Verifying:
    """The transaction a verify body runs in, and the rows whose directory value it added."""

    def __init__(self, tx: Tx, added: list[Row]) -> None:
        self.tx = tx
        self.added = added


@dataclass(frozen=True)
class Verifier:
    ledger: Ledger
    ownership: Ownership
    writer: Writer | None
    clock: Callable[[], float]

    def verify(self, v: Verifying, row: Row, method: str, actor: Actor, event: str) -> None:
        """pending -> verified inside v.tx (directory write first). Appends to v.added at once
        the rows whose directory value we added, to undo if the commit does not happen."""
        tx = v.tx
        self.ownership.check_still_theirs(row)
        now = self.clock()
        if self.writer is not None:
            try:
                if self.writer.add(row.login, row.address, row.identity):
                    v.added.append(row)
            except WriterError as e:
                tx.update(row.id, row.state, last_error=f"directory write failed: {e}")
                self.ledger.audit(
                    tx, actor, "write_failed", row, row.state, row.state, detail=str(e)
                )
                raise Deferred(
                    Refused(
                        "store_unavailable",
                        "The address could not be saved in the directory; it stays waiting, try "
                        "again later.",
                        str(e),
                    )
                ) from None
        new = states.next_state(row.state, event)
        if not tx.update(
            row.id, row.state, state=new, method=method, verified_at=now, updated=now,
            last_error=None,
        ):  # fmt: skip
            raise Refused("not_pending", "This request was already completed.")
        self.ledger.audit(tx, actor, event, row, row.state, new, detail=f"by {method}")

    def run(self, body: Callable[[Verifying], Row]) -> EntryView:
        """Run body (which may call verify) in a transaction; undo the directory writes when
        the transaction does not commit; raise a Deferred refusal only after its bookkeeping
        was committed."""
        added: list[Row] = []
        deferred: Refused | None = None
        committed = False
        try:
            with self.ledger.transaction() as tx:
                try:
                    rid = body(Verifying(tx, added)).id
                except Deferred as d:
                    deferred = d.refused
                    rid = -1
            committed = True
        finally:
            if not committed:
                self._undo(added, added_them=True)
        if deferred is not None:
            raise deferred
        return self.ledger.entry(rid)

    @contextlib.contextmanager
    def removing(self) -> Iterator[Callable[[Row], None]]:
        """A write transaction's scope in which remove(row) deletes the row's directory value;
        the deleted values are added back when the transaction does not commit."""
        removed: list[Row] = []

        def remove(row: Row) -> None:
            if self.writer is None:
                return
            try:
                if self.writer.delete(row.login, row.address, row.identity):
                    removed.append(row)
            except WriterError as e:
                raise Refused(
                    "store_unavailable",
                    "The address could not be removed from the directory; it is still "
                    "verified. Try again later.",
                    str(e),
                ) from None

        committed = False
        try:
            yield remove
            committed = True
        finally:
            if not committed:
                self._undo(removed, added_them=False)

    def _undo(self, rows: list[Row], *, added_them: bool) -> None:
        """After a transaction that did not commit, put the directory back as it was: delete the
        values we added (added_them) or add back the values we deleted. Failures are logged."""
        if self.writer is None:
            return
        undo, verb = (self.writer.delete, "undo") if added_them else (self.writer.add, "restore")
        for row in rows:
            try:
                undo(row.login, row.address, row.identity)
            except WriterError as w:
                log.error(
                    "sender verification: could not %s the directory value %s of %s after a "
                    "failed commit: %s", verb, row.address, row.login, w,
                )  # fmt: skip
