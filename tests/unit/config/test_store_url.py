"""[quotas] store: the URL read once (config/store_url.py) for both store connections, and
every mistake in it a ConfigError naming quotas.store, never a silent default (an unverified
TLS connection, the wrong database)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from policyd.config import ConfigError, load_config
from policyd.config.store_url import parse_store_url


def test_plain_and_unix_urls() -> None:
    t = parse_store_url("redis://127.0.0.1:6380/3")
    assert (t.host, t.port, t.db, t.path) == ("127.0.0.1", 6380, 3, "")
    assert (t.tls, t.password) == (False, "")
    assert t.ssl_context() is None
    t = parse_store_url("redis://policyd:p%40ss@store.example:6379")
    assert (t.username, t.password, t.db) == ("policyd", "p@ss", 0)
    t = parse_store_url("redis://:secret@store.example")
    assert (t.username, t.password, t.port) == ("", "secret", 6379)
    t = parse_store_url("redis://store.example?db=4")
    assert t.db == 4
    t = parse_store_url("unix:///run/valkey/valkey.sock?db=2")
    assert (t.path, t.db, t.host, t.tls) == ("/run/valkey/valkey.sock", 2, "", False)
    t = parse_store_url("redis://[::1]:7000/0")
    assert (t.host, t.port) == ("::1", 7000)


def test_rediss_verifies_the_certificate_and_the_name(tmp_path: Path) -> None:
    t = parse_store_url("rediss://store.example/1")
    assert t.tls and t.db == 1 and not t.ca_file
    ctx = t.ssl_context()
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_rediss_with_a_private_ca_trusts_only_that_ca(tmp_path: Path) -> None:
    from tests.servers.slapd import make_pki

    pki = make_pki(tmp_path / "pki")
    t = parse_store_url(f"rediss://store.example:6380/0?ssl_ca_certs={pki.ca_cert}")
    assert t.ca_file == str(pki.ca_cert)
    ctx = t.ssl_context()
    assert ctx is not None and ctx.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in ctx.get_ca_certs()]  # type: ignore[misc]
    assert subjects == [{"commonName": "policyd test CA"}]  # (not the system's CAs too)
    t = parse_store_url(
        f"rediss://h?ssl_ca_certs={pki.ca_cert}&ssl_certfile={pki.server_cert}"
        f"&ssl_keyfile={pki.server_key}"
    )
    assert (t.cert_file, t.key_file) == (str(pki.server_cert), str(pki.server_key))
    assert t.ssl_context() is not None  # (the client certificate loads)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://h?ssl_cert_reqs=none", "unknown URL parameter 'ssl_cert_reqs'"),
        ("redis://h?sb=1", "unknown URL parameter 'sb'"),
        ("redis://h?ssl_ca_certs=/etc/hostname", "only with rediss://"),
        ("rediss://h?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs: no such file"),
        ("rediss://h?ssl_ca_certs=ca.pem", "an absolute path"),
        ("rediss://h?ssl_keyfile=/etc/hostname", "ssl_keyfile without ssl_certfile"),
        ("redis://h/1?db=2", "the database given twice"),
        ("redis://h/one", "the database must be a number"),
        ("redis://h?db=", "given once, with a value"),
        ("redis://h?db=1&db=2", "given once, with a value"),
        ("redis://h:99999", "not a port"),
        ("redis:///0", "no host"),
        ("unix://run/x.sock", "absolute path"),
        ("http://h", "unknown scheme"),
    ],
)
def test_mistakes_are_named(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("?", r"\?")):
        parse_store_url(url)


def _config(tmp_path: Path, store: str) -> Path:
    cfg = tmp_path / "policyd.toml"
    cfg.write_text(f'[quotas]\nenabled = true\nstore = "{store}"\n')
    return cfg


@pytest.mark.parametrize(
    "store",
    [
        "rediss://:hunter2@store.example?ssl_ca_certs=/no/such/ca.pem",
        "redis://:hunter2@store.example/0?ssl_cert_reqs=none",
    ],
)
def test_config_error_names_the_key_never_the_password(tmp_path: Path, store: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, store))
    assert e.value.key == "quotas.store"
    assert "hunter2" not in str(e.value)


def test_a_ca_file_that_is_not_pem_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, f"rediss://store.example?ssl_ca_certs={bad}"))
    assert e.value.key == "quotas.store"


def test_a_good_rediss_url_loads(tmp_path: Path) -> None:
    from tests.servers.slapd import make_pki

    pki = make_pki(tmp_path / "pki")
    url = f"rediss://store.example:6380/2?ssl_ca_certs={pki.ca_cert}"
    assert load_config(_config(tmp_path, url)).quotas.store == url
