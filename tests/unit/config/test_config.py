from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

import pytest

from policyd.config import (
    Config,
    ConfigError,
    load_config,
)
from policyd.config.listen import parse_listen
from policyd.config.tables import TableReader
from policyd.core.replies import render

CONF = Path(__file__).resolve().parents[3] / "conf"
EXAMPLE_CONFIG = CONF / "policyd.toml"


def load(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "policyd.toml"
    p.write_text(text)
    return load_config(p)


def test_shipped_default_config_loads_with_documented_defaults(tmp_path: Path) -> None:
    """Every key of conf/policyd.toml shows its true default: an empty config next to the
    same range and directory files loads to exactly what the documented file loads to."""
    cfg = load_config(EXAMPLE_CONFIG)
    site = tmp_path / "site"
    site.mkdir()
    for name in ("ranges.txt", "senders.txt"):
        (site / name).write_bytes((CONF / name).read_bytes())
    (site / "policyd.toml").write_bytes(EXAMPLE_CONFIG.read_bytes())
    documented = load_config(site / "policyd.toml")
    (site / "empty.toml").write_text("")
    empty = load_config(site / "empty.toml")
    assert dataclasses.replace(empty, source="") == dataclasses.replace(documented, source="")
    assert cfg.server.listen == ("127.0.0.1:10040",)
    assert cfg.directory.backend == "file"
    assert cfg.directory.file == CONF / "senders.txt"
    assert cfg.networks.files == (CONF / "ranges.txt",)
    assert set(cfg.profiles) == {"submission", "mx"}
    assert cfg.profile("mx").protect_local_senders is True
    assert cfg.profile("submission").ports == (587,) and cfg.profile("mx").ports == (25,)


def test_every_documented_key_compared_one_by_one(tmp_path: Path) -> None:
    """Key by key (so a failure names the key): each value written in conf/policyd.toml equals
    the value an empty config gets."""
    doc = tomllib.loads(EXAMPLE_CONFIG.read_text())
    (tmp_path / "senders.txt").write_text("")
    (tmp_path / "ranges.txt").write_text("")
    (tmp_path / "policyd.toml").write_text("")
    empty = load_config(tmp_path / "policyd.toml")
    reader = TableReader(str(EXAMPLE_CONFIG), tmp_path)
    compared = 0

    def walk(table: dict[str, object], obj: object, where: str) -> None:
        nonlocal compared
        hints = typing.get_type_hints(type(obj))
        for key, value in table.items():
            actual = getattr(obj, key)
            if isinstance(value, dict):
                walk(value, actual, f"{where}{key}.")
                continue
            documented = reader.convert(hints[key], value, where + key)
            assert actual == documented, f"{where}{key}: default {actual!r}, file {documented!r}"
            compared += 1

    for section, table in doc.items():
        if section == "profiles":
            for name, body in table.items():
                walk(body, empty.profile(name), f"profiles.{name}.")
        else:
            walk(table, getattr(empty, section), f"{section}.")

    def leaves(t: dict[str, object]) -> int:
        return sum(leaves(v) if isinstance(v, dict) else 1 for v in t.values())

    assert compared == leaves(doc) > 100


def test_a_new_profile_starts_as_documented(tmp_path: Path) -> None:
    """A profile of another name: [profiles.submission]'s values, except no ports."""
    cfg = load(tmp_path, '[directory]\nfile = "s"\n[profiles.relay]\n')
    new, submission = cfg.profile("relay"), cfg.profile("submission")
    assert new.ports == ()
    assert dataclasses.replace(new, name="submission", ports=(587,)) == submission


def test_every_dataclass_key_is_documented_in_the_shipped_config() -> None:
    import dataclasses
    import tomllib

    from policyd import config as c

    doc = tomllib.loads(EXAMPLE_CONFIG.read_text())
    sections = {
        "server": c.ServerConfig,
        "logging": c.LoggingConfig,
        "metrics": c.MetricsConfig,
        "networks": c.NetworksConfig,
        "addresses": c.AddressesConfig,
        "directory": c.DirectoryConfig,
        "cache": c.CacheConfig,
        "ldap": c.LdapConfig,
        "milter": c.MilterConfig,
        "policy": c.PolicyConfig,
    }
    for name, cls in sections.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(doc[name]) == keys, name
    prof_keys = {f.name for f in dataclasses.fields(c.ProfileConfig)} - {"name"}
    assert set(doc["profiles"]["submission"]) == prof_keys
    assert set(doc["profiles"]["submission"]["replies"]) == {
        f.name for f in dataclasses.fields(c.RepliesConfig)
    }


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[server]\nlisen = []\n", "server.lisen", "unknown key"),
        ("[bogus]\n", "bogus", "unknown key"),
        ('[server]\nmax_connections = "10"\n', "server.max_connections", "must be an integer"),
        ("[server]\nmax_connections = 0\n", "server.max_connections", "greater than 0"),
        ("[server]\nmax_connections = true\n", "server.max_connections", "must be an integer"),
        ('[server]\nlisten = ["localhost"]\n', "server.listen[0]", "HOST:PORT"),
        ("[server]\nidle_timeout = 100\n", "server.idle_timeout", "max_idle"),
        ('[server]\nunix_socket_mode = "rw"\n', "server.unix_socket_mode", "octal"),
        ('[directory]\nbackend = "sql"\n', "directory.backend", "must be one of"),
        ('[ldap]\nservers = ["http://x"]\n', "ldap.servers[0]", "ldap://"),
        ('[ldap]\nbind_dn = "cn=x"\n', "ldap.bind_dn", "bind_password_file"),
        (
            '[ldap]\nuser_filter = "(uid={user})"\n',
            "ldap.user_filter",
            "unknown placeholder {user}",
        ),
        ('[ldap]\nuser_filter = "uid={login}"\n', "ldap.user_filter", "parentheses"),
        ('[policy]\ndefault_profile = "nope"\n', "policy.default_profile", "names no profile"),
        ('[profiles.submission]\nrole = "relay"\n', "profiles.submission.role", "must be one of"),
        (
            '[profiles.submission]\naccept_action = "ACCEPT"\n',
            "profiles.submission.accept_action",
            "must be one of",
        ),
        (
            '[profiles.submission]\nmode = "enforce"\nports = [25]\n[profiles.mx]\nports = [25]\n',
            "profiles.mx.ports",
            "already used",
        ),
        (
            '[profiles.submission.replies]\nsender_not_owned = "553 not owned"\n',
            "profiles.submission.replies.sender_not_owned",
            "4xx|5xx",
        ),
        (
            '[profiles.submission.replies]\nsender_not_owned = "553"\n',
            "profiles.submission.replies.sender_not_owned",
            "4xx|5xx",
        ),
        (
            '[profiles.submission.replies]\ndirectory_unavailable = "553 5.7.1 gone"\n',
            "profiles.submission.replies.directory_unavailable",
            "must be a 4xx",
        ),
        (
            '[profiles.submission.replies]\nsender_not_owned = "553 4.7.1 x"\n',
            "profiles.submission.replies.sender_not_owned",
            "class must match",
        ),
        (
            '[profiles.submission.replies]\nsender_not_owned = "553 5.7.1 {who}"\n',
            "profiles.submission.replies.sender_not_owned",
            "unknown placeholder {who}",
        ),
        ("[profiles.submission]\ncolour = 1\n", "profiles.submission.colour", "unknown key"),
        (
            '[addresses]\nextension_delimiters = "@"\n',
            "addresses.extension_delimiters",
            "may not contain",
        ),
        ("[cache]\npositive_ttl = -1\n", "cache.positive_ttl", "must not be negative"),
    ],
)
def test_bad_values_name_file_key_and_why(tmp_path: Path, text: str, key: str, why: str) -> None:
    base = '[directory]\nfile = "senders.txt"\n' if "[directory]" not in text else ""
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, base + text)
    e = ei.value
    assert e.source == str(tmp_path / "policyd.toml")
    assert e.key == key
    assert why in e.why
    assert str(e).startswith(f"{tmp_path / 'policyd.toml'}: {key}: ")


def test_toml_syntax_error_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[directory]\nfile = "s.txt"\n[networks]\nfiles = ["r.txt", "/abs/r2"]\n')
    assert cfg.directory.file == tmp_path / "s.txt"
    assert cfg.networks.files == (tmp_path / "r.txt", Path("/abs/r2"))


def test_defining_a_profile_keeps_the_built_in_ones(tmp_path: Path) -> None:
    """Issue 26: a profile you define never removes another: [profiles.submission] in warn
    mode leaves mx (role mx, port 25, protect_local_senders) as it was."""
    cfg = load(tmp_path, '[directory]\nfile = "s"\n[profiles.submission]\nmode = "warn"\n')
    assert list(cfg.profiles) == ["submission", "mx"]
    sub, mx = cfg.profile("submission"), cfg.profile("mx")
    assert sub.mode == "warn" and sub.role == "submission" and sub.ports == (587,)
    assert mx.role == "mx" and mx.mode == "enforce" and mx.ports == (25,)
    assert mx.protect_local_senders is True
    # a table of a built-in name changes only its keys
    cfg = load(tmp_path, '[directory]\nfile = "s"\n[profiles.mx]\nprotect_local_senders = false\n')
    assert cfg.profile("mx").role == "mx" and cfg.profile("mx").ports == (25,)
    assert cfg.profile("mx").protect_local_senders is False


def test_a_new_profile_is_added_and_gets_replies_defaults(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[directory]\nfile = "s"\n[policy]\ndefault_profile = "in"\n'
        '[profiles.in]\nrole = "mx"\nmode = "warn"\n',
    )
    assert list(cfg.profiles) == ["submission", "mx", "in"]
    p = cfg.profile("in")
    assert p.name == "in" and p.role == "mx" and p.mode == "warn"
    assert p.replies.sender_not_owned.startswith("553 5.7.1")


def test_default_files_are_next_to_the_config(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.directory.file == tmp_path / "senders.txt"
    assert cfg.networks.files == ()  # the default ranges file may be missing
    (tmp_path / "ranges.txt").write_text("")
    assert load(tmp_path, "").networks.files == (tmp_path / "ranges.txt",)


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[directory]\nfile = "s"\n')
    with pytest.raises(AttributeError):
        cfg.server = cfg.server  # type: ignore[misc]  # (the write under test)
    with pytest.raises(TypeError):
        cfg.profiles["x"] = cfg.profile("mx")  # type: ignore[index]


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.1:10040", ("tcp", "127.0.0.1", 10040)),
        ("[::1]:10040", ("tcp", "::1", 10040)),
        ("localhost:25", ("tcp", "localhost", 25)),
        ("unix:/run/policyd/policy.sock", ("unix", "/run/policyd/policy.sock", None)),
    ],
)
def test_parse_listen(spec: str, parsed: tuple[str, str, int | None]) -> None:
    assert parse_listen(spec) == parsed


@pytest.mark.parametrize("spec", ["::1:10040", "unix:relative", "host", "host:99999", ":25"])
def test_parse_listen_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(spec)


def test_render_sanitises_values() -> None:
    out = render("553 5.7.1 <{sender}> {login}", {"sender": "a\r\nb@x", "login": "bob\x00"})
    assert "\r" not in out and "\n" not in out and "\x00" not in out
    assert out == "553 5.7.1 <a??b@x> bob?"


@pytest.mark.parametrize(
    "template",
    [
        "553 5.7.1 <{sender}> is not owned by user {login}",
        "{sender}",
        "no placeholder at all",
        "",
        "braces {{kept}} around {login}{client} and {{{sender}}}",
        "{range} names no value here",
        "a spec {login:>8}|{sender!r} falls back to str.format",
        "{login:>8}",
    ],
)
def test_render_fills_a_template_as_str_format_would(template: str) -> None:
    values = {"sender": "bob@example.org", "login": "bob", "client": "192.0.2.1"}

    class Missing(dict[str, str]):
        def __missing__(self, key: str) -> str:
            return ""

    want = template.format_map(Missing(values))[:450]
    assert render(template, values) == want
    assert render(template, values) == want  # (the second time from the parsed-template cache)
