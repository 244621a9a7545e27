"""Templates in the config (the profiles' replies, the verification mail): the placeholders each
may use, checked when the config is loaded. core/replies.py fills them."""

from __future__ import annotations

import string
from collections.abc import Set

from policyd.config.tables import ConfigError

#: The placeholders each reply template may use.
PLACEHOLDERS = {
    "null_sender": {"sender", "login", "client"},
    "directory_unavailable": {"sender", "login", "client"},
    "sender_not_owned": {"sender", "login", "client"},
    "sender_not_allowed_from_network": {"sender", "login", "client", "range"},
    "authentication_required": {"sender", "client"},
    "sender_requires_login": {"sender", "client"},
    "header_from_not_owned": {"address", "header", "login", "client", "sender"},
    "header_from_display_address": {"address", "header", "login", "client", "sender"},
    "header_from_invalid": {"login", "client", "sender"},
}


def placeholder_problem(text: str, allowed: Set[str]) -> str | None:
    """Why a template's placeholders are not all `allowed` (or it does not parse), or None."""
    try:
        names = {fname for _, fname, _, _ in string.Formatter().parse(text) if fname is not None}
    except ValueError as e:
        return f"bad template: {e}"
    bad = names - allowed
    if bad:
        known = ", ".join("{" + a + "}" for a in sorted(allowed))
        return f"unknown placeholder {{{sorted(bad)[0]}}} (allowed: {known})"
    return None


def check_template(source: str, key: str, text: str, allowed: Set[str]) -> None:
    """A reply template's placeholders are all `allowed`. Raises ConfigError naming file+key."""
    why = placeholder_problem(text, allowed)
    if why:
        raise ConfigError(source, key, why)
