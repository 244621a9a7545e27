"""The policy service: request attributes -> Decision, gathering the facts the engine needs.

Shared by the socket server and the CLI `check`. Requests that
need no slow lookup, or whose lookup is cached, are decided synchronously (`decide_now`);
only the rest cost a task switch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from policyd.addresses import canonical_login
from policyd.config import ProfileConfig
from policyd.core.decision import Decision, Reason, Verdict
from policyd.core.engine import (
    Facts,
    Need,
    decide,
    keys_needed,
    needs,
    needs_network,
)
from policyd.core.request import Request
from policyd.directory.base import DirectoryUnavailable
from policyd.directory.lookups import (
    key_owners,
    peek_key_owners,
    peek_sender_owners,
    sender_owners,
)
from policyd.networks import Range
from policyd.quotas.current import Quotas
from policyd.runtime import Runtime

log: Final = logging.getLogger("policyd.service")  # (not __name__: the name admins grep)

#: Distinct server_port values whose profile is remembered (per runtime).
_PORT_CACHE_SIZE: Final = 64

#: A policy_context that names no profile is a mistake in Postfix's configuration: deciding
#: with another profile could let mail through (or bounce it) under the wrong role, so the
#: request is deferred (Postfix's own code for a configuration problem) until it is fixed.
UNKNOWN_CONTEXT: Final = Decision(
    Verdict.DEFER,
    Reason.UNKNOWN_CONTEXT,
    "451 4.3.5 Server configuration problem: policy_context names no profile",
)
#: The profile reported (log line, metrics label) with UNKNOWN_CONTEXT.
NO_PROFILE: Final = ProfileConfig(name="-")
#: Seconds between two warnings about unknown policy_context values (not one per request).
UNKNOWN_CONTEXT_LOG_INTERVAL: Final = 60.0


class PolicyService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # server_port -> profile, for the runtime it was computed with (a reload swaps
        # self.runtime, and the next lookup starts a new table)
        self._by_port: tuple[Runtime | None, dict[str, ProfileConfig]] = (None, {})
        #: the clock of the unknown-context warning's interval (a test sets its own)
        self.clock: Callable[[], float] = time.monotonic
        # the unknown-context warning: when it was last written, and requests since
        self._unknown_logged_at = -UNKNOWN_CONTEXT_LOG_INTERVAL
        self._unknown_since = 0
        #: per-login quotas ([quotas]): kept across reloads, with their counters
        self.quotas = Quotas()

    def select_profile(self, req: Request, rt: Runtime | None = None) -> ProfileConfig | None:
        """policy_context names the profile (None: it names none); else the server_port;
        else the default."""
        rt = rt or self.runtime
        profiles = rt.config.profiles
        ctx = req.policy_context
        if ctx:
            p = profiles.get(ctx)
            if p is None:
                self._warn_unknown_context(ctx, rt)
            return p
        port = req.server_port
        by_port = self._by_port
        if by_port[0] is rt:
            hit = by_port[1].get(port)
            if hit is not None:
                return hit
        else:
            by_port = self._by_port = (rt, {})
        profile = self._profile_for_port(port, rt)
        if len(by_port[1]) < _PORT_CACHE_SIZE:  # (Postfix sends a few ports; a client may lie)
            by_port[1][port] = profile
        return profile

    def _warn_unknown_context(self, ctx: str, rt: Runtime) -> None:
        """At most one warning a minute, counting the requests it stands for."""
        self._unknown_since += 1
        now = self.clock()
        if now - self._unknown_logged_at < UNKNOWN_CONTEXT_LOG_INTERVAL:
            return
        log.warning(
            "policy_context=%s names no profile (have: %s); deferring with 451 4.3.5: fix "
            "check_policy_service in Postfix (policyd config-check --postfix); "
            "requests=%d since the last such warning",
            ctx[:64].encode("unicode_escape").decode("ascii"),
            ", ".join(rt.config.profiles),
            self._unknown_since,
        )
        self._unknown_logged_at, self._unknown_since = now, 0

    @staticmethod
    def _profile_for_port(port: str, rt: Runtime) -> ProfileConfig:
        profiles = rt.config.profiles
        # isdigit() alone lets "²" (and 5,000-digit strings) through to int(), which raises.
        if port and port.isascii() and port.isdigit() and len(port) <= 5:
            number = int(port)
            for p in profiles.values():
                if number in p.ports:
                    return p
        return profiles[rt.config.policy.default_profile]

    def decide_now(self, req: Request) -> tuple[ProfileConfig, Decision | Awaitable[Decision]]:
        """Either the decision, or an awaitable of it: a coroutine that finishes it after a
        directory lookup, or a future the quota store's answer resolves."""
        rt = self.runtime
        config = rt.config
        if config.quotas.enabled:  # (off: one attribute read per request)
            quotas = self.quotas.current(config, rt.rules)
            if quotas is not None:
                profile, result = self._decide_now(rt, req)
                if not config.quotas.ldap_attribute:
                    return profile, quotas.hook(req, profile, result)
                cache = getattr(rt.lookups, "inner", rt.lookups)
                if not hasattr(cache, "peek_values"):  # (no directory cache: no LDAP limits)
                    cache = None
                return profile, quotas.hook(req, profile, result, cache)
        return self._decide_now(rt, req)

    def _decide_now(
        self, rt: Runtime, req: Request
    ) -> tuple[ProfileConfig, Decision | Awaitable[Decision]]:
        profile = self.select_profile(req, rt)
        if profile is None:
            return NO_PROFILE, UNKNOWN_CONTEXT
        network = rt.networks.lookup(req.client_address) if needs_network(req) else None
        need = needs(req, profile, network)
        if need is Need.NOTHING:
            return profile, decide(req, profile, Facts(network=network), rt.rules)
        try:
            facts = _peek_facts(rt, req, need, network)
        except DirectoryUnavailable as e:
            log.warning("directory unavailable: %s", str(e))  # (str: see _decide_later)
            facts = Facts(network=network, directory_unavailable=True)
        if facts is None:
            return profile, self._decide_later(rt, req, profile, network, need)
        return profile, decide(req, profile, facts, rt.rules)

    async def _decide_later(
        self,
        rt: Runtime,
        req: Request,
        profile: ProfileConfig,
        network: Range | None,
        need: Need,
    ) -> Decision:
        try:
            facts = await gather_facts(rt, req, need, network)
        except DirectoryUnavailable as e:
            # str(e), not e: a log record keeps its args, and this exception's traceback holds
            # the frames of every request that waited on the same lookup (one exception is
            # re-raised to all of them); from Python 3.13 those frames keep their awaiting
            # callers' frames alive too, with their connections.
            log.warning("directory unavailable: %s", str(e))
            facts = Facts(network=network, directory_unavailable=True)
        return decide(req, profile, facts, rt.rules)

    async def decide(self, req: Request) -> tuple[ProfileConfig, Decision]:
        profile, result = self.decide_now(req)
        if isinstance(result, Decision):
            return profile, result
        decision = await result  # (an await alone in its statement: see policyd/build.py)
        return profile, decision


def _peek_facts(rt: Runtime, req: Request, need: Need, network: Range | None) -> Facts | None:
    """The facts `need` names, when the lookups know them without blocking; else None."""
    lookups, rules = rt.lookups, rt.rules
    sender = req.sender
    if need is Need.ADDRESSES:
        owned = lookups.peek_addresses(canonical_login(req.sasl_username, rules))
        if owned is None:
            return None
        keys = keys_needed(sender, owned, rules)
        if not keys:
            # (positional: Facts(network, owned) is the faster call)
            return Facts(network, owned)
        found = peek_key_owners(lookups, keys)
        if found is None:
            return None
        return Facts(network, owned, key_owners=found)
    owners = peek_sender_owners(lookups, sender, rules)
    if owners is None:
        return None
    return Facts(network, None, owners)


async def gather_facts(rt: Runtime, req: Request, need: Need, network: Range | None) -> Facts:
    """The facts `need` names, looked up. Raises DirectoryUnavailable."""
    lookups, rules = rt.lookups, rt.rules
    sender = req.sender
    if need is Need.ADDRESSES:
        owned = await lookups.addresses_of(canonical_login(req.sasl_username, rules))
        keys = keys_needed(sender, owned, rules)
        if not keys:
            return Facts(network, owned)
        found = await key_owners(lookups, keys)
        return Facts(network, owned, key_owners=found)
    owners = await sender_owners(lookups, sender, rules)
    return Facts(network, None, owners)
