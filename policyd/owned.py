"""A login's owned addresses with the exact-only ones marked. A module of its own because
the compiled build (policyd/build.py) compiles addresses, and mypyc (Debian 13's 1.15)
compiles no subclass of frozenset: this one stays pure."""

from __future__ import annotations


class Owned(frozenset[str]):
    """A login's addresses where some count for their exact key only (`exact_only`: the
    addresses a user verified by mail, see policyd.verification.lookups): a verified
    x@elsewhere.example is not x+tag@elsewhere.example, whose domain may give that to
    someone else."""

    __slots__ = ("exact_only",)
    exact_only: frozenset[str]


def with_exact_only(addresses: frozenset[str], exact_only: frozenset[str]) -> frozenset[str]:
    if not exact_only:
        return addresses
    out = Owned(addresses)
    out.exact_only = exact_only
    return out


__all__ = ["Owned", "with_exact_only"]
