"""The shared machinery of the verification API (see service.py): transactions, audit,
expiry, views, mail sending and the verify step with its undo. No public API here."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from policyd.addresses import AddressRules, candidates
from policyd.config import Config
from policyd.directory.base import Directory, DirectoryUnavailable, entry_id
from policyd.verification import states, tokens
from policyd.verification.mail import Confirmation, Mailer, MailError, build_message, envelope_from
from policyd.verification.normalize import BadAddress, in_domains, normalize_request
from policyd.verification.store import Row, Store, StoreUnavailable, Tx
from policyd.verification.views import Actor, EntryView, PendingView, Refused

log = logging.getLogger("policyd.verification")


class WriterError(Exception):
    """The directory write failed (bind refused, server down, rights). For an admin's eyes."""


class Writer(Protocol):
    """Where verified addresses go with store = "ldap". True: changed; False: already so.
    `identity` (the directory identity recorded with the request, see Directory.identity_of)
    names the entry: a delete whose entry is gone changes nothing and says False."""

    def add(self, login: str, address: str, identity: str | None = None) -> bool: ...

    def delete(self, login: str, address: str, identity: str | None = None) -> bool: ...


_UNAVAILABLE = "The address list cannot be changed right now; try again later."
_DIRECTORY_DOWN = "The user directory cannot be reached; try again later."
#: (the same sentence whoever owns it: it never tells which login has the address)
_MANAGED = (
    "This address is managed by the administrators (in the user directory); it cannot be "
    "verified here. Ask your administrator."
)


class Core:
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
        self.config = config
        self.vc = config.verification
        self.rules: AddressRules = config.addresses.rules()
        self.store = store
        self.mailer = mailer
        self.directory_addresses = directory_addresses
        self.primary_address = primary_address
        self.clock = clock
        self.local_domains = (
            frozenset(self.vc.local_domains) if local_domains is None else local_domains
        )
        self.writer = writer
        #: owners_of (the directory wins) and identity_of (a verified address is the entry's)
        self.directory = directory

    # -- helpers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Tx]:
        try:
            with self.store.transaction() as tx:
                yield tx
        except StoreUnavailable as e:
            log.warning("verification store: %s", e)
            raise Refused("store_unavailable", _UNAVAILABLE, str(e)) from None
        for fmt, args in tx.logs:  # (only what was committed is logged)
            log.info(fmt, *args)

    def _address(self, address: str) -> str:
        try:
            return normalize_request(address, self.rules)
        except BadAddress as e:
            raise Refused(e.code, e.message) from None

    def _owned_in_directory(self, login: str) -> frozenset[str]:
        try:
            return self.directory_addresses(login)
        except DirectoryUnavailable as e:
            raise Refused("directory_unavailable", _DIRECTORY_DOWN, str(e)) from None

    def _identity(self, login: str) -> str:
        """The login's directory identity now; Refused("unknown_login") when the directory
        does not know the login (or finds it ambiguous)."""
        try:
            found = self.directory.identity_of(login)
        except DirectoryUnavailable as e:
            raise Refused("directory_unavailable", _DIRECTORY_DOWN, str(e)) from None
        entry = entry_id(found)
        if entry is None:
            raise Refused("unknown_login", "This login is not in the user directory.")
        return entry

    def _check_foreign(self, login: str, addr: str) -> None:
        """The directory wins: refuse an address in our own domains, or one whose exact key,
        extension-stripped key or "@domain" has an owner in the directory (other than this
        login, whose own addresses are refused earlier as already owned)."""
        if in_domains(addr, self.local_domains):
            raise Refused(
                "local_domain",
                "Addresses in our own domains are assigned by the administrators; ask your "
                "administrator.",
            )
        for key in candidates(addr, self.rules):
            try:
                owners = self.directory.owners_of(key)
            except DirectoryUnavailable as e:
                raise Refused("directory_unavailable", _DIRECTORY_DOWN, str(e)) from None
            if owners - {login}:
                raise Refused("directory_owned", _MANAGED)

    def _check_still_theirs(self, row: Row) -> None:
        """At confirm time: the entry that asked is still the login's, and the directory
        (or local_domains) has not taken the address since."""
        identity = self._identity(row.login)
        if row.identity is not None and row.identity != identity:
            raise Refused("unknown_login", "This login is not in the user directory.")
        self._check_foreign(row.login, row.address)

    def _audit(
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

    def _expire_due(self, tx: Tx, now: float) -> None:
        for row in tx.due_to_expire(now):
            if tx.update(row.id, states.PENDING, state=states.EXPIRED, updated=now):
                self._audit(tx, Actor("system"), "expire", row, states.PENDING, states.EXPIRED)

    def _pending_view(self, row: Row) -> PendingView:
        return PendingView(
            login=row.login, address=row.address, state=row.state, created=row.created,
            code_expires=row.code_expires, link_expires=row.token_expires,
            mail_sent=row.mail_sent, last_error=row.last_error,
            mail_from=self.vc.mail.from_address,
        )  # fmt: skip

    @staticmethod
    def _entry_view(row: Row) -> EntryView:
        return EntryView(
            login=row.login, address=row.address, state=row.state, method=row.method,
            created=row.created, updated=row.updated, verified_at=row.verified_at,
            code_expires=row.code_expires if row.state == states.PENDING else None,
            link_expires=row.token_expires if row.state == states.PENDING else None,
            last_error=row.last_error,
        )  # fmt: skip

    def _fresh_secrets(self, now: float) -> tuple[str, str, dict[str, object]]:
        token, th = tokens.new_token()
        code, salt, ch = tokens.new_code()
        values: dict[str, object] = dict(
            token_hash=th, token_expires=now + self.vc.token_ttl, code_salt=salt, code_hash=ch,
            code_expires=now + self.vc.code_ttl, tries=0, updated=now,
        )  # fmt: skip
        return token, code, values

    def _send(self, rid: int, address: str, primary: str, code: str, token: str) -> Row:
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
        with self._tx() as tx:
            row = tx.by_id(rid)
            assert row is not None
            if error is None:
                tx.update(rid, states.PENDING, mail_sent=now, last_error=None)
            else:
                tx.update(rid, states.PENDING, last_error=error)
                self._audit(
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

    def _primary(self, login: str) -> str:
        primary = self.primary_address(login)
        if primary is None:
            raise Refused("unknown_login", "This login has no address in the user directory.")
        return primary

    def _verify(
        self, tx: Tx, row: Row, method: str, actor: Actor, event: str, added: list[Row]
    ) -> None:
        """pending -> verified inside tx (directory write first). Appends to `added` at once
        the rows whose directory value we added, to undo if the commit does not happen."""
        self._check_still_theirs(row)
        now = self.clock()
        if self.writer is not None:
            try:
                if self.writer.add(row.login, row.address, row.identity):
                    added.append(row)
            except WriterError as e:
                tx.update(row.id, row.state, last_error=f"directory write failed: {e}")
                self._audit(tx, actor, "write_failed", row, row.state, row.state, detail=str(e))
                raise _Deferred(
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
        self._audit(tx, actor, event, row, row.state, new, detail=f"by {method}")

    def _run_verify(self, body: Callable[[_Collect], Row]) -> EntryView:
        """Run body (which may call _verify) in a transaction; undo the directory writes when
        the transaction does not commit; raise a _Deferred refusal only after its bookkeeping
        was committed."""
        added: list[Row] = []
        deferred: Refused | None = None
        committed = False
        try:
            with self._tx() as tx:
                try:
                    rid = body(_Collect(tx, added)).id
                except _Deferred as d:
                    deferred = d.refused
                    rid = -1
            committed = True
        finally:
            if not committed:
                self._undo_writes(added, added_them=True)
        if deferred is not None:
            raise deferred
        return self._entry(rid)

    def _undo_writes(self, rows: list[Row], *, added_them: bool) -> None:
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

    def _entry(self, rid: int) -> EntryView:
        try:
            with self.store.reading() as tx:
                row = tx.by_id(rid)
        except StoreUnavailable as e:
            raise Refused("store_unavailable", _UNAVAILABLE, str(e)) from None
        assert row is not None
        return self._entry_view(row)


class _Deferred(Exception):
    """A refusal raised only after the transaction that recorded it was committed."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.message)
        self.refused = refused


class _Collect:
    def __init__(self, tx: Tx, added: list[Row]) -> None:
        self.tx = tx
        self.added = added
