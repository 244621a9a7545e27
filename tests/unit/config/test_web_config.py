"""The [web] section: documented defaults, unknown keys and bad values are errors."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from policyd.config import ConfigError, WebConfig, load_config

EXAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "conf" / "policyd.toml"


def load(tmp_path: Path, text: str) -> WebConfig:
    p = tmp_path / "policyd.toml"
    p.write_text('[directory]\nfile = "x.txt"\n' + text)
    return load_config(p).web


def test_every_web_key_is_documented_with_its_default() -> None:
    doc = tomllib.loads(EXAMPLE_CONFIG.read_text())["web"]
    assert set(doc) == {f.name for f in dataclasses.fields(WebConfig)}
    assert load_config(EXAMPLE_CONFIG).web == WebConfig()
    assert WebConfig().listen.startswith("127.0.0.1:")  # loopback by default
    assert WebConfig().cookie_secure is True


def test_a_valid_web_section_loads(tmp_path: Path) -> None:
    w = load(
        tmp_path,
        '[web]\nlisten = "[::1]:8080"\nauth = "proxy"\n'
        'trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n'
        'base_url = "https://mail.example.org/senders"\ndatabase = "web.sqlite"\n',
    )
    assert w.listen == "[::1]:8080" and w.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert w.database == tmp_path / "web.sqlite"


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[web]\nlisen = 1\n", "web.lisen", "unknown key"),
        ('[web]\nlisten = "unix:/run/x.sock"\n', "web.listen", "HOST:PORT"),
        ('[web]\nlisten = "nowhere"\n', "web.listen", "not HOST:PORT"),
        ('[web]\nauth = "magic"\n', "web.auth", "must be one of"),
        ('[web]\nauth = "proxy"\n', "web.trusted_proxies", "required"),
        ('[web]\ntrusted_proxies = ["proxy.example"]\n', "web.trusted_proxies[0]", "not an IP"),
        ('[web]\nproxy_header = "X Remote"\n', "web.proxy_header", "header name"),
        ('[web]\nbase_url = "ftp://x"\n', "web.base_url", "http"),
        ("[web]\nmax_body = 0\n", "web.max_body", "greater than 0"),
        ("[web]\ncall_deadline = -1\n", "web.call_deadline", "greater than 0"),
        ("[web]\ncookie_secure = 1\n", "web.cookie_secure", "true or false"),
        (
            "[web]\nsession_idle_timeout = 100.0\nsession_absolute_timeout = 10.0\n",
            "web.session_idle_timeout",
            "must not exceed",
        ),
    ],
)
def test_bad_web_values_name_the_key(tmp_path: Path, text: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert e.value.key == key and why in e.value.why
