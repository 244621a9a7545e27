"""The quotas' hooks into the policy service: thin calls from PolicyService.decide_now.

    RCPT            the engine decided first; a refusal stands (and is a compromise signal).
                    Then the per-message recipient cap (counted per `instance`, refused with
                    452 4.5.3, the recipient not counted) and, with `early_refusal`, a
                    read-only check: a login already over a quota or suspended is answered
                    now, nothing is counted.
    END-OF-MESSAGE  every limit of the login checked and updated at once, counting one message,
                    `recipient_count` recipients and `size` bytes: counted once, only when
                    every limit passes (a refused message changes no counter). Postfix asks
                    only for a message it has accepted so far (smtpd_end_of_data_restrictions).

A refusal is a Decision like the engine's: the decision log line carries the reply, which names
the limit and the numbers; warn mode logs it and answers DUNNO. A suspended login's message is
answered `HOLD` (or the DEFER reply). Counters per (limit, result) are read at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from policyd.addresses import AddressRules, canonical_login
from policyd.config.quotas import QuotaLimits, QuotasConfig
from policyd.core.decision import Decision, Reason, Verdict
from policyd.core.later import Later
from policyd.core.replies import render
from policyd.core.request import Request
from policyd.directory.base import DirectoryUnavailable
from policyd.quotas.charges import QuotaStats as QuotaStats
from policyd.quotas.charges import charges_for as charges_for
from policyd.quotas.charges import format_duration as format_duration
from policyd.quotas.charges import int_of
from policyd.quotas.guard import GuardedStore
from policyd.quotas.ldap_limits import LdapLimits, effective_limits
from policyd.quotas.store import (
    Charge,
    MemoryStore,
    Outcome,
    QuotaStore,
    QuotaStoreError,
)

if TYPE_CHECKING:
    from policyd.config import ProfileConfig
    from policyd.quotas.compromise import Detector, Notify

log: Final = logging.getLogger("policyd.quotas")

#: Messages whose RCPT count is remembered (by `instance`); the oldest is forgotten first.
MAX_OPEN_MESSAGES: Final = 100_000

Result = Decision | Awaitable[Decision]

_REFUSED: Final = (Verdict.REJECT, Verdict.DEFER, Verdict.HOLD)


class QuotaService:
    def __init__(
        self,
        config: QuotasConfig,
        store: QuotaStore,
        rules: AddressRules,
        detector: Detector | None = None,
        notify: Notify | None = None,
        read_only: bool = False,
    ) -> None:
        self.config = config
        #: check, never count (`policyd check`): no detector, no notification either
        self.read_only = read_only
        if read_only:
            detector = notify = None
        self.store = store
        self.rules = rules
        self.stats = QuotaStats()
        self.detector = detector
        self.notify = notify
        #: notifications under way (kept referenced until done)
        self._tasks: set[asyncio.Task[None]] = set()
        #: instance -> recipients accepted at RCPT so far (the per-message cap)
        self._rcpts: OrderedDict[str, int] = OrderedDict()
        # the memory store answers without waiting: no coroutine, no task switch
        self._sync = store if isinstance(store, MemoryStore) else None
        # a shared store behind its breaker: its call sent at once (see _ask)
        self._guarded = store if isinstance(store, GuardedStore) else None
        #: limits from the login's LDAP entry ([quotas] ldap_attribute)
        self._ldap = LdapLimits(config.ldap_attribute) if config.ldap_attribute else None

    # -- the hook -------------------------------------------------------------------------------

    def hook(
        self, req: Request, profile: ProfileConfig, result: Result, lookups: Any = None
    ) -> Result:
        """The engine's result, or the quotas' answer for an authenticated request.
        `lookups` (the directory's cache) is asked for the login's [quotas] ldap_attribute."""
        login = req.sasl_username.strip()
        if not login:
            return result
        state = req.protocol_state.upper()
        if state == "RCPT":
            step = self._rcpt
        elif state == "END-OF-MESSAGE":
            step = self._end_of_message
        else:
            return result
        login = canonical_login(login, self.rules)
        limits = None
        if self._ldap is not None and lookups is not None and not self.config.is_exempt(login):
            values = lookups.peek_values(self._ldap.attribute, login)
            if values is None:
                return self._after(req, profile, login, result, step, lookups)
            limits = effective_limits(self.config, login, values, self._ldap)
        if isinstance(result, Decision):
            return step(req, profile, login, result, limits)
        return self._after(req, profile, login, result, step, None, limits)

    async def _after(
        self,
        req: Request,
        profile: ProfileConfig,
        login: str,
        pending: Result,
        step: Any,
        lookups: Any = None,
        limits: QuotaLimits | None = None,
    ) -> Decision:
        if lookups is not None:
            assert self._ldap is not None
            try:
                values = await lookups.values_of(self._ldap.attribute, login)
            except DirectoryUnavailable as e:
                # (no limits known for the login: never count it under the config's instead)
                d = pending if isinstance(pending, Decision) else await pending
                if d.verdict in _REFUSED:
                    return d
                log.info("quota limits of %s not read: %s", login, e)
                self.stats.add("store", "deferred")
                reply = render(self.config.store_unavailable_reply, {"login": login})
                return Decision(Verdict.DEFER, Reason.QUOTA_STORE_UNAVAILABLE, reply=reply)
            limits = effective_limits(self.config, login, values, self._ldap)
        d = pending if isinstance(pending, Decision) else await pending
        out = step(req, profile, login, d, limits)
        return out if isinstance(out, Decision) else await out

    # -- RCPT -----------------------------------------------------------------------------------

    def _rcpt(
        self,
        req: Request,
        profile: ProfileConfig,
        login: str,
        d: Decision,
        limits: QuotaLimits | None = None,
    ) -> Result:
        exempt = self.config.is_exempt(login)
        if d.verdict in _REFUSED:
            if d.reason is Reason.SENDER_NOT_OWNED and self.detector is not None and not exempt:
                return self._signal_then(d, login, req, "not_owned")
            return d
        if exempt:
            return d
        if limits is None:
            limits = effective_limits(self.config, login)
        cap = limits.recipients_per_message
        n = self._rcpts.get(req.instance, 0) + 1
        if cap and n > cap:
            self.stats.add("recipients_per_message", "refused")
            reply = render(self.config.too_many_recipients_reply, {"login": login, "max": str(cap)})
            return _refuse(profile, Reason.TOO_MANY_RECIPIENTS, reply)
        if req.instance:
            self._rcpts[req.instance] = n
            self._rcpts.move_to_end(req.instance)
            if len(self._rcpts) > MAX_OPEN_MESSAGES:
                self._rcpts.popitem(last=False)
        if not self.config.early_refusal:
            return d
        charges = charges_for(limits, n, 0)
        if self._sync is not None:
            return self._answer(
                profile, login, self._sync.charge_now(login, charges, False), d, "early_refused"
            )
        return self._ask(profile, login, charges, False, d, "early_refused")

    # -- END-OF-MESSAGE -------------------------------------------------------------------------

    def _end_of_message(
        self,
        req: Request,
        profile: ProfileConfig,
        login: str,
        d: Decision,
        limits: QuotaLimits | None = None,
    ) -> Result:
        self._rcpts.pop(req.instance, None)
        if d.verdict in _REFUSED:
            return d
        if self.config.is_exempt(login):
            # never limited, no compromise signals; a suspension (by an admin) still holds
            if self._sync is not None:
                return self._answer(
                    profile, login, self._sync.charge_now(login, [], False), d, "refused"
                )
            return self._ask(profile, login, [], False, d, "refused")
        if limits is None:
            limits = effective_limits(self.config, login)
        recipients = max(1, int_of(req.recipient_count, 1))
        cap = limits.recipients_per_message
        if cap and recipients > cap:
            self.stats.add("recipients_per_message", "refused")
            reply = render(self.config.too_many_recipients_reply, {"login": login, "max": str(cap)})
            return _refuse(profile, Reason.TOO_MANY_RECIPIENTS, reply)
        charges = charges_for(limits, recipients, int_of(req.size, 0))
        if self.detector is not None:
            return self._detect_then_charge(req, profile, login, charges, d)
        # (the queue ID: a message the header From: milter refused is not counted, see
        # QuotaStore.rejected)
        message, commit = req.queue_id, not self.read_only
        if self._sync is not None:
            # (no queue ID, no mark: the milter, another process, cannot reach these counters
            # to take a message back; it has no store at all with store = "none")
            out = self._sync.charge_now(login, charges, commit)
            return self._answer(profile, login, out, d, "refused")
        return self._ask(profile, login, charges, commit, d, "refused", message)

    async def _detect_then_charge(
        self,
        req: Request,
        profile: ProfileConfig,
        login: str,
        charges: list[Charge],
        d: Decision,
    ) -> Decision:
        assert self.detector is not None
        await self.detector.observe(login, req.client_address, req.sender == "", self.store)
        return await self._ask(profile, login, charges, True, d, "refused", req.queue_id)

    async def _signal_then(self, d: Decision, login: str, req: Request, signal: str) -> Decision:
        assert self.detector is not None
        await self.detector.signal(login, signal, self.store)
        return d

    # -- answers --------------------------------------------------------------------------------

    def _ask(
        self,
        profile: ProfileConfig,
        login: str,
        charges: list[Charge],
        commit: bool,
        d: Decision,
        refused: str,
        message: str = "",
    ) -> Awaitable[Decision]:
        """The store's answer as a Decision. A shared store's call is sent now; a Later turns
        its answer into the Decision (no coroutine and no Task: the connection replies from
        the store call's own done-callback)."""
        guarded = self._guarded
        fut = None if guarded is None else guarded.charge_call(login, charges, commit, message)
        if fut is None:  # (the breaker open: the guard's charge(), which retries the store)
            return self._charged(profile, login, charges, commit, d, refused, message)
        return Later(
            fut, partial(self._settle, profile, login, charges, commit, d, refused, message)
        )

    def _settle(
        self,
        profile: ProfileConfig,
        login: str,
        charges: list[Charge],
        commit: bool,
        d: Decision,
        refused: str,
        message: str,
        fut: asyncio.Future[Any],
    ) -> Decision:
        """The Decision from the store call's done future (the guard reads an error from it:
        breaker, fallback, or with on_store_error = "defer" the store_unavailable reply)."""
        assert self._guarded is not None
        try:
            outcome = self._guarded.charged(login, charges, commit, message, fut)
        except QuotaStoreError as e:
            return self._unavailable(login, e)
        return self._answer(profile, login, outcome, d, refused)

    async def _charged(
        self,
        profile: ProfileConfig,
        login: str,
        charges: list[Charge],
        commit: bool,
        d: Decision,
        refused: str,
        message: str,
    ) -> Decision:
        try:
            out = await self.store.charge(login, charges, commit, message)
        except QuotaStoreError as e:
            return self._unavailable(login, e)
        return self._answer(profile, login, out, d, refused)

    def _unavailable(self, login: str, e: QuotaStoreError) -> Decision:
        """The store could not answer (only with on_store_error = "defer": the guard counts
        in memory otherwise)."""
        log.warning("quota store unavailable: %s", str(e))
        self.stats.add("store", "deferred")
        reply = render(self.config.store_unavailable_reply, {"login": login})
        return Decision(Verdict.DEFER, Reason.QUOTA_STORE_UNAVAILABLE, reply=reply)

    def _answer(
        self, profile: ProfileConfig, login: str, out: Outcome, d: Decision, refused: str
    ) -> Decision:
        if out.allowed:
            if out.rejected_elsewhere:
                self.stats.add("all", "rejected_elsewhere")
            elif refused == "refused":
                self.stats.add("all", "counted")
            return d
        if out.suspended is not None:
            if profile.mode == "warn":  # (roll-out: say what would have happened)
                self.stats.add("suspended", "warned")
                would = render(self.config.suspended_defer_reply, {"login": login})
                if self.config.suspended_action == "hold":
                    would = "HOLD " + self.config.suspended_hold_text
                return Decision(Verdict.DUNNO, Reason.LOGIN_SUSPENDED, would_have=would)
            if self.config.suspended_action == "hold":
                self.stats.add("suspended", "held")
                return Decision(
                    Verdict.HOLD,
                    Reason.LOGIN_SUSPENDED,
                    reply="HOLD " + self.config.suspended_hold_text,
                )
            self.stats.add("suspended", "deferred")
            reply = render(self.config.suspended_defer_reply, {"login": login})
            return Decision(Verdict.DEFER, Reason.LOGIN_SUSPENDED, reply=reply)
        self.stats.add(out.hit, refused)
        if refused == "refused" and self.notify is not None:
            self._spawn(self._notify_over(login, out))
        values = {
            "login": login,
            "limit": out.hit,
            "used": str(out.used),
            "max": str(out.limit),
            "cost": str(out.cost),
            "retry": format_duration(out.retry_after),
        }
        return _refuse(profile, Reason.QUOTA_EXCEEDED, render(self.config.over_quota_reply, values))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no loop: a one-shot decision outside the daemon)
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify_over(self, login: str, out: Outcome) -> None:
        """A mail the first time in notify_period that `login` goes over this limit."""
        assert self.notify is not None
        try:
            first = await self.store.once(login, "over:" + out.hit, self.config.notify_period)
        except QuotaStoreError as e:
            log.warning("notification about %s skipped: %s", login, str(e))
            return
        if first:
            await self.notify(
                login,
                f"policyd: {login} went over its quota {out.hit}",
                f"The login {login} went over its quota {out.hit} ({out.used} of {out.limit} "
                f"used; the refused message: {out.cost}). Its messages are deferred until "
                f"the counter drains (in {format_duration(out.retry_after)}).\n\n"
                f"Usage: policyd quota show {login}\n",
            )

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=15)
        await self.store.close()


def _refuse(profile: ProfileConfig, reason: Reason, reply: str) -> Decision:
    """A quota refusal: always temporary (4xx); warn mode only logs it."""
    if profile.mode == "warn":
        return Decision(Verdict.DUNNO, reason, would_have=reply)
    return Decision(Verdict.DEFER, reason, reply=reply)
