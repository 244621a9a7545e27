"""The self-service page's sending quota (/usage, issue 28): a logged-in user sees their own
usage per limit (used, the limit, when the counter is back to zero) and what happens at a
limit, read from the shared quota store ([quotas] store = "redis://..."). With the in-memory
store the counters live in the mail server's process: the page says it cannot show them.

The user's own login only (the session's); the limits are those the mail server applies to
that login (`effective_limits`: the config's, its domain's and its own overrides, then its LDAP
entry's [quotas] ldap_attribute, read through the directory with the page's deadline). A store
or directory that does not answer gives a page that says so (logged), never numbers that are
not true.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from policyd.addresses import canonical_login
from policyd.directory.base import DirectoryError, DirectoryUnavailable
from policyd.quotas.ldap_limits import effective_limits
from policyd.quotas.service import charges_for, format_duration
from policyd.quotas.store import QuotaStore, QuotaStoreError
from policyd.web.backend import Overloaded
from policyd.web.context import WebState, redirect, render, state

log: Final = logging.getLogger("policyd.web")

LABELS: Final = {
    "messages_per_hour": "Messages per hour",
    "messages_per_day": "Messages per day",
    "recipients_per_day": "Recipients per day",
    "bytes_per_day": "Bytes per day",
}


class _Held:
    """The store this page reads: made at the first request, in the app's event loop (a
    redis.asyncio client belongs to the loop it first connected on)."""

    store: QuotaStore | None = None


STORE: Final = web.AppKey("quota_store", _Held)


def _store(request: web.Request, st: WebState) -> QuotaStore:
    held = request.app[STORE]
    if held.store is None:
        from policyd.quotas.redis_store import RedisStore

        qc = st.config.quotas
        held.store = RedisStore(qc.store, max(qc.store_timeout, 1.0))
    return held.store


async def usage_page(request: web.Request) -> web.StreamResponse:
    session = request["session"]
    if session is None:
        raise redirect(request, "/login")
    st = state(request)
    qc = st.config.quotas
    login = canonical_login(str(session.login), st.rules)
    view: dict[str, Any] = {
        "enabled": qc.enabled,
        "shared": qc.store != "none",
        "exempt": qc.enabled and qc.is_exempt(login),
        "rows": [],
        "cap": 0,
        "suspended": False,
        "unavailable": False,
        "hold": qc.suspended_action == "hold",
    }
    if qc.enabled and view["shared"] and not view["exempt"]:
        values = None
        if qc.ldap_attribute and st.directory_values is not None:
            try:
                values = await st.blocking.run(st.directory_values, qc.ldap_attribute, login)
            except (DirectoryError, DirectoryUnavailable, Overloaded) as e:
                log.warning("web: quota usage not shown: limits not read: %s", str(e) or "timeout")
                view["unavailable"] = True
                return render(request, "usage.html", **view)
        limits = effective_limits(qc, login, values)
        view["cap"] = limits.recipients_per_message
        store = _store(request, st)
        try:
            usage = await store.usage(login, charges_for(limits, 0, 0))
            view["suspended"] = (await store.suspension(login)) is not None
        except QuotaStoreError as e:
            log.warning("web: quota usage not shown: store unavailable: %s", str(e))
            view["unavailable"] = True
        else:
            view["rows"] = [
                {
                    "label": LABELS.get(u.name, u.name),
                    "used": u.used,
                    "max": u.limit,
                    "left": max(0, u.limit - u.used),
                    "resets": format_duration(u.resets_in) if u.resets_in > 0 else "",
                }
                for u in usage
            ]
    return render(request, "usage.html", **view)


async def close_store(app: web.Application) -> None:
    held = app[STORE]
    if held.store is not None:
        await held.store.close()
        held.store = None


def add_routes(app: web.Application) -> None:
    app[STORE] = _Held()
    app.router.add_get("/usage", usage_page)
    app.on_cleanup.append(close_store)
