"""The policy service: request attributes -> Decision, gathering the facts the engine needs.

Shared by the socket server, the CLI `check` and (for its lookups) the milter. Requests that
need no slow lookup, or whose lookup is cached, are decided synchronously (`decide_now`);
only the rest cost a task switch.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from policyd.addresses import canonical_login, normalize_address
from policyd.config import ProfileConfig
from policyd.decision import Decision
from policyd.directory.base import DirectoryUnavailable
from policyd.engine import Facts, Need, decide, needs, needs_network
from policyd.runtime import Runtime

log = logging.getLogger(__name__)

#: Distinct server_port values whose profile is remembered (per runtime).
_PORT_CACHE_SIZE = 64


class PolicyService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # server_port -> profile, for the runtime it was computed with (a reload swaps
        # self.runtime, and the next lookup starts a new table)
        self._by_port: tuple[Runtime | None, dict[str, ProfileConfig]] = (None, {})

    def select_profile(self, attrs: Mapping[str, str], rt: Runtime | None = None) -> ProfileConfig:
        """policy_context names the profile; else the server_port; else the default."""
        rt = rt or self.runtime
        profiles = rt.config.profiles
        ctx = attrs.get("policy_context", "")
        if ctx:
            p = profiles.get(ctx)
            if p is not None:
                return p
            log.warning("policy_context=%s names no profile; using the default", ctx[:64])
        port = attrs.get("server_port", "")
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

    def decide_now(
        self, attrs: Mapping[str, str]
    ) -> tuple[ProfileConfig, Decision | Coroutine[Any, Any, Decision]]:
        """Either the decision, or a coroutine that finishes it after a directory lookup."""
        rt = self.runtime
        profile = self.select_profile(attrs, rt)
        network = (
            rt.networks.lookup(attrs.get("client_address", "")) if needs_network(attrs) else None
        )
        need = needs(attrs, profile, network)
        if need is Need.NOTHING:
            return profile, decide(attrs, profile, Facts(network=network), rt.rules)
        if need is Need.ADDRESSES:
            kind, key = "a", canonical_login(attrs.get("sasl_username", ""), rt.rules)
        else:
            kind, key = "o", normalize_address(attrs.get("sender", ""), rt.rules)
        if rt.lookups is None:
            try:
                fn = rt.directory.addresses_of if kind == "a" else rt.directory.owners_of
                facts = _facts(network, kind, fn(key))
            except DirectoryUnavailable as e:
                log.warning("directory unavailable: %s", e)
                facts = Facts(network=network, directory_unavailable=True)
            return profile, decide(attrs, profile, facts, rt.rules)
        hit = rt.lookups.peek(kind, key)
        if hit is not None:
            return profile, decide(attrs, profile, _facts(network, kind, hit), rt.rules)
        return profile, self._decide_later(rt, attrs, profile, network, kind, key)

    async def _decide_later(
        self,
        rt: Runtime,
        attrs: Mapping[str, str],
        profile: ProfileConfig,
        network: Any,
        kind: str,
        key: str,
    ) -> Decision:
        assert rt.lookups is not None
        try:
            if kind == "a":
                value = await rt.lookups.addresses_of(key)
            else:
                value = await rt.lookups.owners_of(key)
            facts = _facts(network, kind, value)
        except DirectoryUnavailable as e:
            # str(e), not e: a log record keeps its args, and this exception's traceback holds
            # the frames of every request that waited on the same lookup (one exception is
            # re-raised to all of them); from Python 3.13 those frames keep their awaiting
            # callers' frames alive too, with their connections.
            log.warning("directory unavailable: %s", str(e))
            facts = Facts(network=network, directory_unavailable=True)
        return decide(attrs, profile, facts, rt.rules)

    async def decide(self, attrs: Mapping[str, str]) -> tuple[ProfileConfig, Decision]:
        profile, result = self.decide_now(attrs)
        if isinstance(result, Decision):
            return profile, result
        return profile, await result


def _facts(network: Any, kind: str, value: frozenset[str]) -> Facts:
    # (positional: Facts(network, owned, sender_owners) is the faster call)
    if kind == "a":
        return Facts(network, value)
    return Facts(network, None, value)
