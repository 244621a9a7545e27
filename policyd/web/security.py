"""Rules every request and response goes through: headers, CSRF, form limits.

- Every response: a strict Content-Security-Policy (no script at all, styles and images only
  from this origin, forms post only here, no framing), X-Frame-Options DENY, Referrer-Policy
  no-referrer (the landing page's URL holds a token), X-Content-Type-Options nosniff, and
  Cache-Control no-store on everything but the stylesheet.
- CSRF: a logged-in form carries its session's token; a form without a session (log in, the
  landing page) carries the value of a random `csrf` cookie (double submit: another site can
  neither read nor set our cookies). Compared with hmac.compare_digest. A POST whose Origin
  header names another origin, or whose Sec-Fetch-Site is another site, is refused as well.
- Forms: only application/x-www-form-urlencoded, the body at most web.max_body bytes (aiohttp's
  client_max_size), each field at most web.max_field characters, no control characters except
  where a field allows them (none here does).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import web

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

ANON_CSRF_COOKIE = "policyd_csrf"


class BadForm(Exception):
    """The request is refused before anything is looked at (a reason for the person)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def apply_headers(response: web.StreamResponse, *, cacheable: bool = False) -> None:
    for k, v in HEADERS.items():
        response.headers[k] = v
    if cacheable:
        response.headers["Cache-Control"] = "public, max-age=3600"
    else:
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_equal(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def origin_ok(request: web.Request, base_url: str) -> bool:
    """A browser's POST says where it comes from: Sec-Fetch-Site must not be another site,
    and an Origin header must be ours. "Origin: null" is what browsers send for our own forms
    under Referrer-Policy: no-referrer, so it proves nothing either way; no header at all (old
    browsers, curl) passes too. The CSRF token still has to be right in every case."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    if base_url:
        u = urlsplit(base_url)
        ours = f"{u.scheme}://{u.netloc}"
    else:
        ours = f"{request.scheme}://{request.host}"
    return origin.lower() == ours.lower()


def _has_controls(value: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 or 0x80 <= ord(ch) < 0xA0 for ch in value)


async def read_form(
    request: web.Request, max_field: int, fields: tuple[str, ...]
) -> dict[str, str]:
    """The named fields of a urlencoded POST body (missing ones are ""). Raises BadForm for a
    wrong content type, a body over the limit, a repeated, overlong or control-character
    field."""
    ctype = request.content_type
    if ctype != "application/x-www-form-urlencoded":
        raise BadForm(415, "Forms must be sent as application/x-www-form-urlencoded.")
    try:
        post = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise BadForm(413, "The form is too large.") from None
    except ValueError:
        raise BadForm(400, "The form could not be read.") from None
    out: dict[str, str] = {}
    for name in fields:
        values = post.getall(name, [])
        if len(values) > 1:
            raise BadForm(400, "A form field was sent twice.")
        value = values[0] if values else ""
        if not isinstance(value, str):
            raise BadForm(400, "Files cannot be sent here.")
        if len(value) > max_field:
            raise BadForm(400, "A form field is too long.")
        if _has_controls(value):
            raise BadForm(400, "A form field holds control characters (such as line breaks).")
        out[name] = value
    return out
