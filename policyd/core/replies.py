"""Reply templates: filling them (render). Pure.

The templates themselves are the profile's `replies` table (core.profile.RepliesConfig, documented
in conf/policyd.toml; config/replies.py checks their placeholders when the config is loaded);
the engine renders them with the request's values.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Final

from policyd.core import limits


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a reply template. Values are sanitised: no control characters reach Postfix."""
    parts = _PARSED.get(template)
    if parts is None:
        parts = _parse(template)
        if len(_PARSED) < 256:  # (templates come from the config: a handful)
            _PARSED[template] = parts
    if not parts:  # a conversion or format spec somewhere: str.format does it all
        safe = {k: _clean(v) for k, v in values.items()}
        out = template.format_map(_Missing(safe))
    else:
        out = "".join(
            [text + _clean(values.get(name, "")) if name else text for text, name in parts]
        )
    return out[: limits.MAX_REPLY_TEXT]


#: template -> its (literal text, placeholder name or "") pieces; () when a placeholder has a
#: conversion or format spec (then render uses str.format_map)
_PARSED: Final[dict[str, tuple[tuple[str, str], ...]]] = {}


def _parse(template: str) -> tuple[tuple[str, str], ...]:
    parts: list[tuple[str, str]] = []
    for text, name, spec, conversion in string.Formatter().parse(template):
        if name is not None and (spec or conversion):
            return ()
        parts.append((text, name or ""))
    return tuple(parts) or (("", ""),)


def _clean(v: str) -> str:
    if v.isprintable():  # (nearly always: the per-character pass only when needed)
        return v
    return "".join(ch if ch.isprintable() else "?" for ch in v)


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""
