"""The aiohttp application: middleware (headers, sessions, errors), log in, log out.

The address pages and the landing page are in pages.py. Every response gets the headers of
security.py; every POST is checked for its CSRF token and Origin before anything else happens.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from policyd.addresses import AddressRules, canonical_login
from policyd.config import Config
from policyd.directory.base import DirectoryUnavailable
from policyd.web import security
from policyd.web.auth import LdapLogin, LoginUnavailable, address_in, parse_networks
from policyd.web.backend import Blocking, Overloaded
from policyd.web.sessions import Session, SessionStore, StoreError, identity_text

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class WebState:
    config: Config
    rules: AddressRules
    sessions: SessionStore
    #: LDAP binds, the Verification API, the directory (may hang with a server)
    blocking: Blocking
    #: "ldap", "proxy" or "none" (web.auth "auto" resolved)
    auth: str
    ldap_login: LdapLogin | None
    #: the Verification object (policyd.verification), None when not configured
    verification: Any
    #: login -> the addresses the directory gives it (blocking)
    directory_addresses: Callable[[str], frozenset[str]]
    #: login -> what identifies its directory entry now (Directory.identity_of; blocking):
    #: a session belongs to the entry that logged in
    directory_identity: Callable[[str], frozenset[str]] | None = None
    templates: jinja2.Environment = field(init=False)
    #: the session store's own threads: a hung directory cannot hold up every page
    session_calls: Blocking = field(init=False)

    def __post_init__(self) -> None:
        self.session_calls = Blocking(2, self.blocking.deadline)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("policyd.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.proxies = parse_networks(self.config.web.trusted_proxies)
        # Behind a proxy at https://host/senders/, links and redirects start with /senders.
        vc = getattr(self.config, "verification", None)
        self.site_name = self.config.web.site_name or (vc.site_name if vc else "") or "policyd"
        self.prefix = urlsplit(self.config.web.base_url).path.rstrip("/")
        secure = self.config.web.cookie_secure
        # __Host- cookies: only over HTTPS, for this host and path / only (no subdomain can
        # set or overwrite them).
        self.session_cookie = "__Host-policyd-session" if secure else "policyd-session"
        self.csrf_cookie = "__Host-policyd-csrf" if secure else "policyd-csrf"


STATE: web.AppKey[WebState] = web.AppKey("policyd_web", WebState)


def state(request: web.Request) -> WebState:
    return request.app[STATE]


def client_ip(request: web.Request) -> str:
    """The client's address; behind a trusted proxy, the last X-Forwarded-For hop it added."""
    st = state(request)
    remote = request.remote or ""
    if address_in(remote, st.proxies):
        fwd = request.headers.get("X-Forwarded-For", "")
        hops = [h.strip() for h in fwd.split(",") if h.strip()]
        if hops:
            return hops[-1][:64]
    return remote


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    st = state(request)
    session: Session | None = request.get("session")
    values.setdefault("site_name", st.site_name)
    values.setdefault("login", session.login if session else None)
    values.setdefault("csrf", session.csrf if session else request.get("anon_csrf", ""))
    values.setdefault("auth", st.auth)
    values.setdefault("prefix", st.prefix)
    html = st.templates.get_template(template).render(**values)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def redirect(request: web.Request, path: str) -> web.HTTPSeeOther:
    """A 303 to one of our pages (under the base URL's path)."""
    return web.HTTPSeeOther(state(request).prefix + path)


def message(request: web.Request, status: int, title: str, text: str) -> web.Response:
    return render(request, "message.html", status=status, title=title, text=text)


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    st = state(request)
    response.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        secure=st.config.web.cookie_secure,
        samesite="Lax",
    )


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


#: The form fields each POST handler reads, besides csrf (see form_fields).
FORM_FIELDS: dict[Any, tuple[str, ...]] = {}


def form_fields(*names: str) -> Callable[[Handler], Handler]:
    """Declares the fields a POST handler reads; others are ignored, these are checked."""

    def mark(handler: Handler) -> Handler:
        FORM_FIELDS[handler] = names
        return handler

    return mark


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
    key = canonical_login(user, st.rules) if user else ""
    wc = st.config.web
    n_ip, n_login = await st.session_calls.run(st.sessions.failures, ip, key)
    if n_ip >= wc.login_max_failures_per_ip or n_login >= wc.login_max_failures_per_login:
        log.warning("web: login throttled (client %s)", ip)
        minutes = max(1, round(wc.login_window / 60))
        return render(
            request,
            "login.html",
            status=429,
            user=user,
            error=f"Too many failed logins. Please wait {minutes} minutes and try again.",
        )
    try:
        ok = await st.blocking.run(st.ldap_login.authenticate, key, password) if key else None
    except LoginUnavailable:
        return render(
            request,
            "login.html",
            status=503,
            user=user,
            error="Logging in is not possible right now. Please try again later.",
        )
    if ok is None:
        await st.session_calls.run(st.sessions.record_failure, ip, key)
        log.info("web: login failed (client %s)", ip)
        return render(
            request, "login.html", status=401, user=user, error="Wrong login or password."
        )
    identity = await _identity(st, ok)
    if identity is None and st.directory_identity is not None:
        # (the bind found the entry a moment ago: it is gone, or the directory is failing)
        return render(
            request,
            "login.html",
            status=503,
            user=user,
            error="Logging in is not possible right now. Please try again later.",
        )
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
    from policyd.web import pages

    app = web.Application(middlewares=[guard], client_max_size=st.config.web.max_body)
    app[STATE] = st
    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout_post)
    pages.add_routes(r)
    r.add_static("/static/", STATIC_DIR)
    return app


STATIC_DIR = Path(__file__).resolve().parent / "static"
