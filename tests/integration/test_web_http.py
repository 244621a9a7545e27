"""Security rules of `policyd web`, over plain HTTP against the running process.

Sessions, CSRF, headers and form limits with a trusted-proxy login (no LDAP needed); logging in
with a password against a real slapd (marker slapd). The address flows themselves, with a real
mail sink, are in test_web_verification.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.slapd import REPO, free_port
from tests.servers.web import Client, WebServer

pytest.importorskip("aiohttp")

SENDERS = REPO / "conf" / "senders.txt"

EXPECTED_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def proxy_config(tmp: Path, **web: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in web.items())
    return (
        f'[directory]\nfile = "{SENDERS}"\n'
        "[web]\n"
        'auth = "proxy"\n'
        'trusted_proxies = ["127.0.0.2"]\n'
        f'database = "{tmp / "web.sqlite"}"\n'
        + ("cookie_secure = false\n" if "cookie_secure" not in web else "")
        + extra
    )


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    tmp = tmp_path_factory.mktemp("web-proxy")
    with WebServer(tmp, proxy_config(tmp, max_body="4096", max_field="300")) as w:
        yield w


def as_proxy(w: WebServer, login: str = "alice") -> tuple[Client, dict[str, str]]:
    """A client connecting from the trusted proxy address 127.0.0.2, naming `login`."""
    return Client(w.url, source="127.0.0.2"), {"X-Remote-User": login}


def csrf_of(c: Client, headers: dict[str, str]) -> str:
    r = c.get("/login", headers=headers)
    if r.status == 303:
        r = c.get("/addresses", headers=headers)
    return r.form_value("csrf")


def assert_security_headers(r: object, cacheable: bool = False) -> None:
    for k, v in EXPECTED_HEADERS.items():
        assert r.header(k) == v, (k, r.header(k))  # type: ignore[attr-defined]
    cc = r.header("Cache-Control")  # type: ignore[attr-defined]
    assert (cc == "no-store") != cacheable, cc


def test_every_response_carries_the_security_headers(proxied: WebServer) -> None:
    c = Client(proxied.url)
    p, hdr = as_proxy(proxied)
    replies = [
        c.get("/login"),
        c.get("/"),  # a redirect
        c.get("/no/such/page"),  # 404
        c.post("/login", {"user": "x"}),  # 403: no CSRF token
        c.request("PUT", "/login"),  # 405
        c.get("/confirm?token=" + "A" * 43),  # unknown link
        p.get("/addresses", headers=hdr),  # logged in via the proxy
    ]
    statuses = [r.status for r in replies]
    assert statuses[:5] == [200, 303, 404, 403, 405], statuses
    for r in replies:
        assert_security_headers(r)
    css = c.get("/static/style.css")
    assert css.status == 200
    assert_security_headers(css, cacheable=True)


def test_no_page_has_inline_script_styles_or_event_handlers(proxied: WebServer) -> None:
    c = Client(proxied.url)
    p, hdr = as_proxy(proxied)
    for r in (c.get("/login"), c.get("/nope"), p.get("/addresses", headers=hdr)):
        html = r.text.lower()
        assert "<html" in html
        assert "<script" not in html
        assert " style=" not in html and "<style" not in html
        assert not re.search(r"\son[a-z]+\s*=", html), html


def test_proxy_header_counts_only_from_a_trusted_proxy(proxied: WebServer) -> None:
    untrusted = Client(proxied.url)  # from 127.0.0.1, not in trusted_proxies
    r = untrusted.get("/addresses", headers={"X-Remote-User": "alice"})
    assert r.status == 303 and r.header("Location") == "/login"
    assert "policyd-session" not in untrusted.cookies
    assert "X-Remote-User header from 127.0.0.1" in proxied.log_text()
    p, hdr = as_proxy(proxied)
    r = p.get("/addresses", headers=hdr)
    assert "policyd-session" in p.cookies
    assert "Logged in as <strong>alice</strong>" in r.text


def test_session_cookie_is_httponly_samesite_lax_and_random(proxied: WebServer) -> None:
    seen = set()
    for _ in range(3):
        p, hdr = as_proxy(proxied)
        r = p.get("/addresses", headers=hdr)
        raw = [v for v in r.headers.get_all("Set-Cookie") or [] if "policyd-session=" in v]
        assert len(raw) == 1
        assert "HttpOnly" in raw[0] and "SameSite=Lax" in raw[0] and "Path=/" in raw[0]
        value = p.cookies["policyd-session"]
        assert len(value) >= 43  # 256 bits, urlsafe base64
        seen.add(value)
    assert len(seen) == 3


def test_session_ids_are_stored_only_as_hashes(proxied: WebServer) -> None:
    p, hdr = as_proxy(proxied, "bob")
    p.get("/addresses", headers=hdr)
    sid = p.cookies["policyd-session"]
    with sqlite3.connect(proxied.workdir / "web.sqlite") as db:
        rows = db.execute("SELECT id_hash, login FROM web_sessions").fetchall()
    assert rows and all(sid not in h for h, _ in rows)
    assert ("bob",) in [(login,) for _, login in rows]


def test_secure_cookies_when_cookie_secure_is_on(tmp_path: Path) -> None:
    with WebServer(tmp_path, proxy_config(tmp_path, cookie_secure="true")) as w:
        r = Client(w.url).get("/login")
        raw = r.headers.get_all("Set-Cookie") or []
        assert raw and all(v.startswith("__Host-") and "Secure" in v for v in raw), raw
        p, hdr = as_proxy(w)
        page = p.get("/addresses", headers=hdr)
        assert "__Host-policyd-session" in p.cookies
        out = p.post("/logout", {"csrf": page.form_value("csrf")}, headers=hdr)
        gone = [v for v in out.headers.get_all("Set-Cookie") or [] if "policyd-session" in v]
        # a browser replaces a __Host- cookie only with one that is Secure too
        assert len(gone) == 1 and "Max-Age=0" in gone[0] and "Secure" in gone[0], gone


def test_post_without_or_with_a_wrong_csrf_token_is_refused(proxied: WebServer) -> None:
    p, hdr = as_proxy(proxied)
    token = csrf_of(p, hdr)
    other, ohdr = as_proxy(proxied, "bob")
    other_token = csrf_of(other, ohdr)
    anon_token = p.cookies["policyd-csrf"]  # the token of forms made without a session
    for fields in (
        {},
        {"csrf": ""},
        {"csrf": "x" * 43},
        {"csrf": other_token},  # another user's session
        {"csrf": anon_token},  # a form made without a session
    ):
        r = p.post("/logout", fields, headers=hdr)
        assert r.status == 403, (fields, r.status)
        assert "This form has expired" in r.text
    # and the right one works
    r = p.post("/logout", {"csrf": token}, headers=hdr)
    assert r.status == 303


def test_login_form_without_its_csrf_cookie_is_refused(proxied: WebServer) -> None:
    c = Client(proxied.url)
    c.get("/login")
    token = c.cookies["policyd-csrf"]
    fresh = Client(proxied.url)  # has the token, but not the cookie it belongs to
    r = fresh.post("/login", {"csrf": token, "user": "alice", "password": "x"})
    assert r.status == 403


def test_post_from_another_origin_is_refused(proxied: WebServer) -> None:
    p, hdr = as_proxy(proxied)
    token = csrf_of(p, hdr)
    r = p.post("/logout", {"csrf": token}, headers={**hdr, "Origin": "https://evil.example"})
    assert r.status == 403 and "another site" in r.text
    for site in ("cross-site", "same-site"):
        r = p.post("/logout", {"csrf": token}, headers={**hdr, "Sec-Fetch-Site": site})
        assert r.status == 403, site
    # what Chromium sends for our own form under Referrer-Policy: no-referrer
    r = p.post(
        "/logout",
        {"csrf": token},
        headers={**hdr, "Origin": "null", "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status == 303


def test_body_size_content_type_and_field_limits(proxied: WebServer) -> None:
    p, hdr = as_proxy(proxied)
    token = csrf_of(p, hdr)
    big = p.post("/logout", {"csrf": token, "pad": "x" * 5000}, headers=hdr)
    assert big.status == 413
    long_field = p.post("/addresses/add", {"csrf": token, "address": "a" * 301}, headers=hdr)
    assert long_field.status == 400 and "too long" in long_field.text
    crlf = p.post(
        "/addresses/add", {"csrf": token, "address": "a@b.example\r\nBcc: x@y"}, headers=hdr
    )
    assert crlf.status == 400 and "control characters" in crlf.text
    twice = p.request(
        "POST",
        "/addresses/add",
        f"csrf={token}&address=a%40b.example&address=c%40d.example".encode(),
        {"Content-Type": "application/x-www-form-urlencoded", **hdr},
    )
    assert twice.status == 400
    multipart = p.request(
        "POST",
        "/logout",
        b"--b\r\nContent-Disposition: form-data; name=csrf\r\n\r\n"
        + token.encode()
        + b"\r\n--b--\r\n",
        {"Content-Type": "multipart/form-data; boundary=b", **hdr},
    )
    assert multipart.status == 415
    # none of these ended the session
    assert p.get("/addresses", headers=hdr).form_value("csrf") == token


def test_file_backend_without_a_login_method_says_self_service_is_not_available(
    tmp_path: Path,
) -> None:
    cfg = (
        f'[directory]\nfile = "{SENDERS}"\n'
        f'[verification]\nenabled = true\ndatabase = "{tmp_path / "v.sqlite"}"\n'
        f'[web]\ncookie_secure = false\ndatabase = "{tmp_path / "web.sqlite"}"\n'
    )
    with WebServer(tmp_path, cfg) as w:
        c = Client(w.url)
        r = c.get("/login")
        assert r.status == 200
        assert "Self-service is not available here" in r.text
        assert "keeps its users in a file" in r.text
        assert "policyd senders request LOGIN ADDRESS" in r.text
        assert 'name="password"' not in r.text
        r = c.post("/login", {"csrf": r.form_value("csrf") if "csrf" in r.text else ""})
        assert r.status in (403, 404)


def test_proxy_mode_needs_trusted_proxies(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[directory]\nfile = "{SENDERS}"\n[web]\nauth = "proxy"\n')
    r = subprocess.run(
        [sys.executable, "-m", "policyd", "web", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "web.trusted_proxies" in r.stderr


def test_behind_a_proxy_path_links_and_redirects_keep_the_base_urls_path(tmp_path: Path) -> None:
    port = free_port()
    cfg = proxy_config(tmp_path, base_url='"https://mail.example.org/senders"')
    with WebServer(tmp_path / "w", cfg, port=port) as w:
        c = Client(w.url)
        r = c.get("/")
        assert r.status == 303 and r.header("Location") == "/senders/login"
        p, hdr = as_proxy(w)
        page = p.get("/addresses", headers=hdr)
        assert 'href="/senders/static/style.css"' in page.text
        assert 'action="/senders/logout"' in page.text
        token = page.form_value("csrf")
        # the Origin must be base_url's, not the Host the proxy connected to
        bad = p.post("/logout", {"csrf": token}, headers={**hdr, "Origin": w.url})
        assert bad.status == 403
        ok = p.post(
            "/logout", {"csrf": token}, headers={**hdr, "Origin": "https://mail.example.org"}
        )
        assert ok.status == 303 and ok.header("Location") == "/senders/login"


# --- the lifecycle (web.server.WebApp) ----------------------------------------------------------


def test_sigterm_stops_the_page_and_it_exits_0(tmp_path: Path) -> None:
    w = WebServer(tmp_path, proxy_config(tmp_path)).start()
    assert w.proc is not None
    proc = w.proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    w.stop()
    log = w.log_text()
    assert "web: listening on 127.0.0.1:" in log and "Traceback" not in log


def test_a_listen_address_in_use_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    config = tmp_path / "policyd.toml"
    config.write_text(proxy_config(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "policyd", "web", "--config", str(config)]
            + ["--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=dict(os.environ, POLICYD_NO_UVLOOP="1", PYTHONPATH=str(REPO)),
        )
    assert r.returncode == 1, r.stderr
    assert f"web.listen 127.0.0.1:{port}: " in r.stderr and "in use" in r.stderr
    assert "Traceback" not in r.stderr
