"""The aiohttp application: middleware (headers, sessions, errors), log in, log out.

The address pages and the landing page are in pages.py, what every handler uses in context.py.
Every response gets the headers of security.py; every POST is checked for its CSRF token and
Origin before anything else happens.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aiohttp import web

from policyd.addresses import canonical_login
from policyd.directory.base import DirectoryUnavailable
from policyd.web import pages, security, usage
from policyd.web.auth import (
    LoginUnavailable,
    Throttled,
    address_in,
    folded,
    untrusted_loopback_proxy,
)
from policyd.web.backend import Overloaded
from policyd.web.context import (
    FORM_FIELDS,
    STATE,
    Handler,
    WebState,
    client_ip,
    form_fields,
    message,
    redirect,
    render,
    set_cookie,
    state,
)
from policyd.web.sessions import Attempt, Session, StoreError, identity_text

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Middleware


async def _load_session(request: web.Request) -> None:
    """Puts request["session"] (or None) and request["sid"]; in proxy mode makes a session
    for the login a trusted proxy names (and drops one for another login)."""
    st = state(request)
    sid = request.cookies.get(st.session_cookie, "")
    session = await st.session_calls.run(st.sessions.get, sid) if sid else None
    if st.auth == "proxy":
        proxied = None
        if address_in(request.remote, st.proxies):
            raw = request.headers.get(st.config.web.proxy_header, "").strip()
            if raw and len(raw) <= 256 and raw.isprintable():
                proxied = canonical_login(raw, st.rules)
        elif st.config.web.proxy_header in request.headers:
            log.warning(
                "web: %s header from %s, which is not in web.trusted_proxies: ignored",
                st.config.web.proxy_header,
                request.remote,
            )
        if proxied is None:
            session = None
        elif session is None or session.login != proxied:
            if sid:
                await st.session_calls.run(st.sessions.delete, sid)
            identity = await _identity(st, proxied)
            sid, session = await st.session_calls.run(st.sessions.create, proxied, identity)
            request["new_sid"] = sid
    if session is not None and st.directory_identity is not None:
        now = await _identity(st, session.login)
        if now is None or now != session.identity:
            await _end(st, session, sid, request)
            session = None
    request["session"], request["sid"] = session, sid


async def _end(st: WebState, session: Session, sid: str, request: web.Request) -> None:
    """The entry that logged in is gone, was replaced (another person under the same login)
    or its password changed: the session is over."""
    await st.session_calls.run(st.sessions.delete, sid)
    log.info("web: session of %s ended: its directory entry changed", session.login)
    request["session_ended"] = True


async def _identity(st: WebState, login: str) -> str | None:
    """What identifies the login's directory entry now (one string; None: unknown)."""
    if st.directory_identity is None:
        return None
    return identity_text(await st.blocking.run(st.directory_identity, login))


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as e:
        if e.status >= 400:
            response = message(request, e.status, e.reason, _STATUS_TEXT.get(e.status, e.reason))
        else:
            response = e
    except Overloaded:
        response = message(
            request, 503, "Try again later", "The service is busy. Please try again later."
        )
    except StoreError as e:
        log.error("web: store error: %s", e)
        response = message(
            request, 503, "Try again later", "The service cannot store data right now."
        )
    except DirectoryUnavailable as e:
        log.warning("web: directory unavailable: %s", e)
        response = message(
            request, 503, "Try again later", "The user directory cannot be reached right now."
        )
    if request.get("new_sid"):
        set_cookie(request, response, state(request).session_cookie, request["new_sid"])
    if request.get("set_anon_csrf"):
        set_cookie(request, response, state(request).csrf_cookie, request["anon_csrf"])
    security.apply_headers(response, cacheable=request.path.startswith("/static/"))
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    st = state(request)
    if request.path.startswith("/static/"):
        return await handler(request)
    await _load_session(request)
    if request.get("session_ended") and request.method == "POST":
        return message(
            request, 403, "Session ended", "Your session has ended. Please log in again."
        )
    anon = request.cookies.get(st.csrf_cookie, "")
    if not (20 <= len(anon) <= 100):
        anon = security.new_token()
        request["set_anon_csrf"] = True
    request["anon_csrf"] = anon
    if request.method == "POST":
        if not security.origin_ok(request, st.config.web.base_url):
            return message(request, 403, "Refused", "This form was sent from another site.")
        try:
            fields = FORM_FIELDS.get(request.match_info.handler, ())
            form = await security.read_form(request, st.config.web.max_field, ("csrf", *fields))
        except security.BadForm as e:
            return message(request, e.status, "Refused", e.message)
        session: Session | None = request["session"]
        expected = session.csrf if session is not None else anon
        # A form made for a session (or for no session) is only good with that one.
        if request.get("set_anon_csrf") and session is None:
            expected = ""
        if not security.tokens_equal(form.get("csrf"), expected):
            return message(
                request,
                403,
                "Refused",
                "This form has expired or was not sent from this page. Reload the page and "
                "try again.",
            )
        request["form"] = form
    return await handler(request)


_STATUS_TEXT = {
    404: "There is no page here.",
    405: "That is not allowed here.",
    413: "The request is too large.",
}


# ---------------------------------------------------------------------------------------------
# Log in / log out


async def index(request: web.Request) -> web.StreamResponse:
    target = "/addresses" if request["session"] is not None else "/login"
    raise redirect(request, target)


async def login_page(request: web.Request) -> web.StreamResponse:
    st = state(request)
    if request["session"] is not None:
        raise redirect(request, "/addresses")
    if st.auth == "none" or st.verification is None:
        return render(request, "unavailable.html", enabled=st.verification is not None)
    return render(request, "login.html", error=None, user="")


@form_fields("user", "password")
async def login_post(request: web.Request) -> web.StreamResponse:
    st = state(request)
    if st.auth != "ldap" or st.ldap_login is None:
        return message(request, 404, "Not here", "Logging in with a password is not used here.")
    form = request["form"]
    user = form["user"].strip()
    password = form["password"]
    ip = client_ip(request)
    wc = st.config.web

    def unavailable() -> web.Response:
        return render(
            request,
            "login.html",
            status=503,
            user=user,
            error="Logging in is not possible right now. Please try again later.",
        )

    if untrusted_loopback_proxy(request.remote, request.headers, st.proxies):
        now = time.monotonic()
        if not st.proxy_warned or now - st.proxy_warned >= 60:
            st.proxy_warned = now
            log.error(
                "web: login refused: %s forwards clients (X-Forwarded-For) but "
                "web.trusted_proxies is empty; set it to the proxy's address, or one client's "
                "failed logins lock out everyone",
                request.remote,
            )
        return unavailable()
    typed = canonical_login(user, st.rules) if user else ""
    # The throttle's key: what the directory may match it with (fullwidth or not, one bucket).
    key = folded(typed)

    def throttled() -> web.Response:
        log.warning("web: login throttled (client %s)", ip)
        minutes = max(1, round(wc.login_window / 60))
        return render(
            request,
            "login.html",
            status=429,
            user=user,
            error=f"Too many failed logins. Please wait {minutes} minutes and try again.",
        )

    # Counted as a failure before the password is checked (and in the same transaction as the
    # check of the limits): parallel attempts cannot get past the limit.
    attempt = await st.session_calls.run(
        st.sessions.begin_attempt,
        ip,
        key,
        wc.login_max_failures_per_ip,
        wc.login_max_failures_per_login,
    )
    if attempt is None:
        return throttled()
    counted: list[Attempt] = [attempt]

    def gate(entry_login: str) -> bool:
        # (in the LDAP thread) the directory's own login is counted as well, if it differs
        if entry_login == key or len(counted) > 1:  # (once: the next server, same entry)
            return True
        more = st.sessions.also_login(attempt, entry_login, wc.login_max_failures_per_login)
        if more is None:
            return False
        counted.append(more)
        return True

    try:
        ok = (
            await st.blocking.run(st.ldap_login.authenticate, typed, password, gate)
            if typed
            else None
        )
    except Throttled:
        return throttled()
    except LoginUnavailable:
        # No server answered: no password was checked, so the attempt does not count.
        await st.session_calls.run(st.sessions.succeeded, counted[-1])
        return unavailable()
    if ok is None:
        log.info("web: login failed (client %s)", ip)
        return render(
            request, "login.html", status=401, user=user, error="Wrong login or password."
        )
    await st.session_calls.run(st.sessions.succeeded, counted[-1])
    identity = await _identity(st, ok)
    if identity is None and st.directory_identity is not None:
        # (the bind found the entry a moment ago: it is gone, or the directory is failing)
        return unavailable()
    if request["sid"]:
        await st.session_calls.run(st.sessions.delete, request["sid"])
    sid, session = await st.session_calls.run(st.sessions.create, ok, identity)
    log.info("web: %s logged in (client %s)", ok, ip)
    request["new_sid"] = sid
    return redirect(request, "/addresses")


async def logout_post(request: web.Request) -> web.StreamResponse:
    st = state(request)
    if request["sid"]:
        await st.session_calls.run(st.sessions.delete, request["sid"])
    request["session"] = None
    response = redirect(request, "/login")
    response.del_cookie(
        st.session_cookie,
        path="/",
        secure=st.config.web.cookie_secure,  # a __Host- cookie is only replaced over Secure
        httponly=True,
        samesite="Lax",
    )
    return response


def build_app(st: WebState) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=st.config.web.max_body)
    app[STATE] = st
    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout_post)
    pages.add_routes(r)
    usage.add_routes(app)
    r.add_static("/static/", STATIC_DIR)
    return app


STATIC_DIR = Path(__file__).resolve().parent / "static"
