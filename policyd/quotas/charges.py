"""Per message: the charges of a login's limits (prebuilt per set of limits), the numbers a
request carries, the durations a reply names, the counters by (limit, result) (split off
service.py, which imports them from here)."""

from __future__ import annotations

from policyd.config.quotas import LIMITS, QuotaLimits
from policyd.quotas.store import Charge


class QuotaStats:
    """Counters by (limit, result), read at scrape time (no per-login label, ever)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, limit: str, result: str) -> None:
        key = (limit, result)
        self.counts[key] = self.counts.get(key, 0) + 1


#: limits -> for each limit set: its Charge if it costs 1 per message, else (name, limit,
#: period, unit): read once per set of limits (bounded)
_SET: dict[QuotaLimits, list[Charge | tuple[str, int, float, str]]] = {}


def charges_for(limits: QuotaLimits, recipients: int, size: int) -> list[Charge]:
    """The charges of one message for a login's limits (those set, in LIMITS order)."""
    spec = _SET.get(limits)
    if spec is None:
        if len(_SET) >= 4096:
            _SET.clear()
        spec = _SET[limits] = [
            Charge(name, getattr(limits, name), period, 1)
            if unit == "messages"
            else (name, getattr(limits, name), period, unit)
            for name, (period, unit) in LIMITS.items()
            if getattr(limits, name) > 0
        ]
    return [
        c
        if type(c) is Charge
        else Charge(c[0], c[1], c[2], recipients if c[3] == "recipients" else size)
        for c in spec
    ]


def int_of(value: str, default: int) -> int:
    v = value.strip()
    return int(v) if v.isascii() and v.isdigit() and len(v) <= 15 else default


def format_duration(seconds: float) -> str:
    """ "45s", "12m", "2h10m": for a reply."""
    s = max(1, int(seconds + 0.999))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{(s + 59) // 60}m"
    h, m = divmod((s + 59) // 60, 60)
    return f"{h}h{m:02d}m" if m else f"{h}h"
