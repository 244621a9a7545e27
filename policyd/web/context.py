"""What every handler uses: the app's WebState, the client's address, rendering, redirects,
cookies, and the form fields a POST handler declares (app.py's middleware checks them).

app.py (middleware, log in/out) and pages.py (the address and landing pages) both build on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from policyd.addresses import AddressRules
from policyd.config import Config
from policyd.web.auth import LdapLogin, address_in, parse_networks
from policyd.web.backend import Blocking
from policyd.web.sessions import Session, SessionStore

if TYPE_CHECKING:
    from policyd.verification.service import Verification

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
    #: the Verification API (policyd.verification), None when not configured
    verification: Verification | None
    #: login -> the addresses the directory gives it (blocking)
    directory_addresses: Callable[[str], frozenset[str]]
    #: login -> what identifies its directory entry now (Directory.identity_of; blocking):
    #: a session belongs to the entry that logged in
    directory_identity: Callable[[str], frozenset[str]] | None = None
    #: (attribute, login) -> the values of that attribute in the login's entry (blocking;
    #: LDAP only): the /usage page's [quotas] ldap_attribute limits
    directory_values: Callable[[str, str], frozenset[str]] | None = None
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
        self.site_name = (
            self.config.web.site_name or self.config.verification.site_name or "policyd"
        )
        self.prefix = urlsplit(self.config.web.base_url).path.rstrip("/")
        secure = self.config.web.cookie_secure
        # __Host- cookies: only over HTTPS, for this host and path / only (no subdomain can
        # set or overwrite them).
        self.session_cookie = "__Host-policyd-session" if secure else "policyd-session"
        self.csrf_cookie = "__Host-policyd-csrf" if secure else "policyd-csrf"
        #: when the unconfigured-proxy error was last logged (monotonic; 0 = never)
        self.proxy_warned = 0.0


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


#: The form fields each POST handler reads, besides csrf (see form_fields).
FORM_FIELDS: dict[Any, tuple[str, ...]] = {}


def form_fields(*names: str) -> Callable[[Handler], Handler]:
    """Declares the fields a POST handler reads; others are ignored, these are checked."""

    def mark(handler: Handler) -> Handler:
        FORM_FIELDS[handler] = names
        return handler

    return mark
