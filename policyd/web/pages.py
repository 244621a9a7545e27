"""The sender-address pages and the confirmation link's landing page.

Every change is a POST (checked for its CSRF token by app.guard) that ends in a redirect to the
list (303, so a reload does not repeat it) with a fixed message code, never user text, in the
query. A refusal re-renders the page with the API's sentence, which never says whether another
login has or requested the address. The landing page's GET only reads (`Verification.landing`):
a mail scanner that fetches the link confirms nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from policyd.verification.views import Actor, Refused
from policyd.web.context import client_ip, form_fields, message, redirect, render, state

if TYPE_CHECKING:
    from policyd.config import Config
    from policyd.verification.service import Verification
    from policyd.web.backend import Blocking

log = logging.getLogger(__name__)

#: ?done= codes -> the sentence shown above the list.
DONE = {
    "requested": "A confirmation mail is on its way. Enter its code below, or use its link.",
    "resent": "A new confirmation mail is on its way; the old code and link no longer work.",
    "confirmed": "The address is confirmed: you may now send mail as it.",
    "cancelled": "The request was cancelled.",
    "removed": "The address was removed: you can no longer send mail as it.",
}

_STATUS_FOR = {
    # (the same status: a page must not tell a suppressed address from a rate-limited one)
    "rate_limited": 429,
    "suppressed": 429,
    "too_many_tries": 429,
    "store_unavailable": 503,
    "mail_failed": 503,
}

_MAX_TOKEN = 200


def _when(value: float | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))
    return str(value)


def _actor(request: web.Request, who: str) -> Actor:
    return Actor(who=who, ip=client_ip(request) or None)


def _login(request: web.Request) -> str:
    session = request["session"]
    if session is None:
        raise redirect(request, "/login")
    return str(session.login)


def _verification(request: web.Request) -> Verification:
    v = state(request).verification
    if v is None:
        raise web.HTTPServiceUnavailable(reason="Self-service is not set up")
    return v


async def addresses_page(request: web.Request) -> web.StreamResponse:
    return await _render_list(request, _login(request))


async def _render_list(
    request: web.Request,
    login: str,
    *,
    status: int = 200,
    error: str | None = None,
    typed: str = "",
    error_for: str = "",
) -> web.Response:
    st = state(request)
    v = _verification(request)
    directory = sorted(await st.blocking.run(st.directory_addresses, login))
    entries = await st.blocking.run(v.entries, login=login)
    verified = [e for e in entries if str(e.state) == "verified"]
    pending = [e for e in entries if str(e.state) == "pending"]
    # With verification.store = "ldap" the directory also returns the verified ones (also
    # those that no longer count: listed as neither).
    mine = {str(e.address) for e in entries if str(e.state) in ("verified", "superseded")}
    directory = [a for a in directory if a not in mine]
    done = DONE.get(request.query.get("done", ""), None) if status == 200 else None
    return render(
        request,
        "addresses.html",
        status=status,
        directory=directory,
        verified=verified,
        pending=pending,
        done=done,
        error=error,
        error_for=error_for,
        typed=typed,
        when=_when,
        mail_from=_mail_from(st.config),
        quotas=st.config.quotas.enabled,
    )


def _mail_from(config: Config) -> str:
    return config.verification.mail.from_address


#: one change of the list: (the threads, the API, the login, who) -> the API's call, run
Change = Callable[["Blocking", "Verification", str, Actor], Awaitable[object]]


async def _change(
    request: web.Request,
    call: str,
    done: str,
    address: str,
    change: Change,
    *,
    field_for_error: str = "",
) -> web.StreamResponse:
    st = state(request)
    login = _login(request)
    v = _verification(request)
    try:
        await change(st.blocking, v, login, _actor(request, login))
    except Refused as e:
        log.info("web: %s %s refused: %s", login, call, e.code)
        return await _render_list(
            request,
            login,
            status=_STATUS_FOR.get(e.code, 400),
            error=e.message,
            typed=address if call == "request" else "",
            error_for=field_for_error or address,
        )
    raise redirect(request, f"/addresses?done={done}")


class AddressChange(Protocol):
    """Verification.request, resend, cancel or revoke."""

    def __call__(self, login: str, address: str, *, actor: Actor) -> object: ...


def _on_address(pick: Callable[[Verification], AddressChange], address: str) -> Change:
    async def change(b: Blocking, v: Verification, login: str, actor: Actor) -> object:
        return await b.run(pick(v), login, address, actor=actor)

    return change


@form_fields("address")
async def add_post(request: web.Request) -> web.StreamResponse:
    address = request["form"]["address"].strip()
    change = _on_address(lambda v: v.request, address)
    return await _change(request, "request", "requested", address, change, field_for_error="add")


@form_fields("address", "code")
async def confirm_code_post(request: web.Request) -> web.StreamResponse:
    form = request["form"]
    address, code = form["address"], form["code"].strip().replace(" ", "")

    async def change(b: Blocking, v: Verification, login: str, actor: Actor) -> object:
        return await b.run(v.confirm_code, login, address, code, actor=actor)

    return await _change(request, "confirm_code", "confirmed", address, change)


@form_fields("address")
async def resend_post(request: web.Request) -> web.StreamResponse:
    address = request["form"]["address"]
    return await _change(
        request, "resend", "resent", address, _on_address(lambda v: v.resend, address)
    )


@form_fields("address")
async def cancel_post(request: web.Request) -> web.StreamResponse:
    address = request["form"]["address"]
    return await _change(
        request, "cancel", "cancelled", address, _on_address(lambda v: v.cancel, address)
    )


@form_fields("address")
async def remove_post(request: web.Request) -> web.StreamResponse:
    address = request["form"]["address"]
    return await _change(
        request, "revoke", "removed", address, _on_address(lambda v: v.revoke, address)
    )


# ---------------------------------------------------------------------------------------------
# The confirmation link


def _token(raw: str) -> str | None:
    if not raw or len(raw) > _MAX_TOKEN or not all(c.isalnum() or c in "-_" for c in raw):
        return None
    return raw


async def landing_page(request: web.Request) -> web.StreamResponse:
    st = state(request)
    v = _verification(request)
    token = _token(request.query.get("token", ""))
    try:
        view = await st.blocking.run(v.landing, token) if token else None
    except Refused as e:
        return message(request, 503, "Try again later", e.message)
    if view is None:
        return message(
            request,
            404,
            "This link does not work",
            "The link is unknown, was already used, or has expired. If you still want to add "
            "the address, log in and request a new confirmation mail.",
        )
    return render(request, "landing.html", view=view, token=token, when=_when, result=None)


@form_fields("token", "action")
async def landing_post(request: web.Request) -> web.StreamResponse:
    st = state(request)
    v = _verification(request)
    form = request["form"]
    token = _token(form["token"])
    action = form["action"]
    if token is None or action not in ("confirm", "refuse"):
        return message(request, 400, "Refused", "This form is not complete.")
    actor = _actor(request, "link")
    try:
        if action == "confirm":
            await st.blocking.run(v.confirm_token, token, actor=actor)
            text = (
                "Thank you: the address is confirmed. Its owner may now send mail as it "
                "through this server."
            )
        else:
            await st.blocking.run(v.refuse_token, token, actor=actor)
            text = (
                "Thank you: the request was refused, and this address will not be asked "
                "again. Nothing else is needed from you."
            )
    except Refused as e:
        return message(request, _STATUS_FOR.get(e.code, 400), "This link does not work", e.message)
    return message(request, 200, "Done", text)


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_get("/addresses", addresses_page)
    r.add_post("/addresses/add", add_post)
    r.add_post("/addresses/confirm", confirm_code_post)
    r.add_post("/addresses/resend", resend_post)
    r.add_post("/addresses/cancel", cancel_post)
    r.add_post("/addresses/remove", remove_post)
    r.add_get("/confirm", landing_page)
    r.add_post("/confirm", landing_post)
