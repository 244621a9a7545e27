"""Per-login limits from an attribute of the login's LDAP entry ([quotas] ldap_attribute).

The value: "messages_per_hour=100,recipients_per_day=2000" (keys of [quotas.limits], integers,
0 = no limit; commas or spaces between); several values of the attribute are read as one list.
Keys it does not name keep the config's limits for that login. A value that cannot be read
(an unknown key, a key twice, not a whole number) is logged once and the config's limits are
used: an error never gives a login more than the config does.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import fields, replace
from typing import Final

from policyd.config.quotas import QuotaLimits, QuotasConfig

log: Final = logging.getLogger("policyd.quotas")

_KEYS: Final = frozenset(f.name for f in fields(QuotaLimits))
_ITEM: Final = re.compile(r"^([a-z_]+)=([0-9]{1,15})$")
#: bad values already logged (login, value): at most this many remembered
_WARNED_MAX: Final = 10_000


def parse_limits(values: frozenset[str] | list[str], base: QuotaLimits) -> QuotaLimits:
    """`base` with the keys the values set. Raises ValueError naming what is wrong."""
    seen: dict[str, int] = {}
    for value in sorted(values):
        for item in re.split(r"[,\s]+", value.strip()):
            if not item:
                continue
            m = _ITEM.match(item.strip().lower())
            if m is None:
                raise ValueError(f"{item!r} is not NAME=NUMBER")
            key, number = m.group(1), int(m.group(2))
            if key not in _KEYS:
                raise ValueError(f"unknown limit {key!r} (known: {', '.join(sorted(_KEYS))})")
            if key in seen:
                raise ValueError(f"{key} given twice")
            seen[key] = number
    return replace(base, **seen) if seen else base


class LdapLimits:
    """The limits of a login from its entry's values; a bad value warns once per login."""

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute
        self._warned: OrderedDict[tuple[str, frozenset[str]], None] = OrderedDict()

    def limits(self, login: str, values: frozenset[str], base: QuotaLimits) -> QuotaLimits:
        try:
            return parse_limits(values, base)
        except ValueError as e:
            key = (login, values)
            if key not in self._warned:
                self._warned[key] = None
                if len(self._warned) > _WARNED_MAX:
                    self._warned.popitem(last=False)
                log.warning(
                    "quota override unreadable: login=%s attribute=%s why=%s; the config's "
                    "limits apply",
                    login,
                    self.attribute,
                    e,
                )
            return base


def effective_limits(
    config: QuotasConfig,
    login: str,
    values: frozenset[str] | None = None,
    ldap: LdapLimits | None = None,
) -> QuotaLimits:
    """The limits that apply to a canonical login, the one computation for the decision, for
    `policyd quota show` and for the /usage page: [quotas.limits], then the login's domain's
    override, then its own ([quotas.logins]), then the keys its LDAP entry's
    [quotas] ldap_attribute sets (`values`, read by the caller; None: not configured)."""
    base = config.limits_for(login)
    if values is None or not config.ldap_attribute:
        return base
    if ldap is None:
        ldap = LdapLimits(config.ldap_attribute)
    return ldap.limits(login, values, base)
