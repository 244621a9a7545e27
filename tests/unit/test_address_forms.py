"""Address forms (issue 24) and look-alike domains (issue 23, section 2).

* The decision table of tests/address_forms.py through PolicyService with the file directory
  (the same rows run through a real Postfix in tests/system/test_postfix_address_forms.py).
* A property test: the keys policyd derives for generated senders agree with a model of
  Postfix's resolver (rewrite_tree / resolve_addr) and split_addr, written below from Postfix's
  documentation (postconf(5): swap_bangpath, allow_percent_hack, resolve_dequoted,
  recipient_delimiter, owner_request_special; trivial-rewrite(8); access(5) and
  smtpd_sender_login_maps for the lookup order), token by token rather than on strings.
* IDNA 2008 / UTS #46 non-transitional domains, the file directory's refusals, the
  verification refusals, `policyd check --sender`.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyd.addresses import (
    AddressRules,
    InvalidDomain,
    candidates,
    envelope_sender,
    fold_local,
    idna_domain,
    normalize_address,
    normalize_domain,
    split_extension,
)
from policyd.config import ConfigError, config_from_dict
from policyd.core.decision import Decision, to_action
from policyd.core.request import Request
from policyd.directory.base import DirectoryError
from policyd.directory.ldap.entries import entry_addresses
from policyd.directory.static import StaticDirectory
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from policyd.verification.normalize import BadAddress, normalize_request
from tests.address_forms import ADDRESSES, ROWS, SENDERS, Row

# ---------------------------------------------------------------------------------------------
# The decision table


def service(tmp_path: Path, addresses: dict[str, Any] | None = None) -> PolicyService:
    (tmp_path / "senders.txt").write_text(SENDERS, encoding="utf-8")
    data: dict[str, Any] = {
        "networks": {"files": []},
        "addresses": ADDRESSES if addresses is None else addresses,
        "directory": {"backend": "file", "file": "senders.txt"},
        "profiles": {
            "submission": {"role": "submission", "ports": [587]},
            "mx": {"role": "mx", "ports": [25], "protect_local_senders": True},
        },
    }
    return PolicyService(build_runtime(config_from_dict(data, "t.toml", tmp_path)))


def ask(svc: PolicyService, login: str | None, sender: str) -> str:
    """The action for a sender written as in MAIL FROM, passed on as smtpd passes it."""
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "203.0.113.9",
        "sender": envelope_sender(sender),
        "sasl_username": login or "",
        "recipient": "rcpt@example.net",
        "server_port": "25" if login is None else "587",
    }
    _, result = svc.decide_now(Request.from_attrs(attrs))
    assert isinstance(result, Decision)
    return to_action(result)


def answer(action: str) -> str:
    if action in ("OK", "DUNNO"):
        return "accept"
    assert action.startswith("553 5.7.1 "), action
    return "reject"


@pytest.fixture(scope="module")
def forms_service(tmp_path_factory: pytest.TempPathFactory) -> PolicyService:
    return service(tmp_path_factory.mktemp("forms"))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_address_form_table(forms_service: PolicyService, row: Row) -> None:
    action = ask(forms_service, row.login, row.sender)
    assert answer(action) == row.policyd, action
    if row.policyd == "reject":
        wording = "is not owned by user" if row.login else "requires SMTP authentication"
        assert wording in action


def test_table_has_each_class_in_both_directions() -> None:
    classes = {r.cls.split("-")[0] for r in ROWS}
    assert {"1", "2", "3", "4", "5", "6"} <= classes
    for c in ("1", "2", "3", "4", "5", "6"):
        rows = [r for r in ROWS if r.cls.startswith(c + "-")]
        assert {r.policyd for r in rows} == {"accept", "reject"}, c
        assert any(r.login for r in rows) and any(r.login is None for r in rows), c


def test_forms_follow_the_postfix_switches(tmp_path: Path) -> None:
    """swap_bangpath / allow_percent_hack off: the forms are addresses of their own again (no
    owner); mydestination empty: a routing form keeps its domain."""
    off = {**ADDRESSES, "swap_bangpath": False, "allow_percent_hack": False}
    svc = service(tmp_path, off)
    assert ask(svc, None, "example.org!alice") == "DUNNO"
    assert ask(svc, None, "alice%example.org") == "DUNNO"
    assert answer(ask(svc, "alice", "alice%example.org")) == "reject"
    (tmp_path / "b").mkdir()
    svc = service(tmp_path / "b", {**ADDRESSES, "mydestination": []})
    assert answer(ask(svc, "bob", "bob%other.example@example.org")) == "reject"
    assert ask(svc, None, "bob%other.example@example.org") == "DUNNO"
    # (without "@" the forms do not need mydestination)
    assert answer(ask(svc, None, "example.org!alice")) == "reject"
    assert answer(ask(svc, None, "alice%example.org")) == "reject"


def test_owner_request_special_off_splits_them(tmp_path: Path) -> None:
    svc = service(tmp_path, {**ADDRESSES, "owner_request_special": False})
    assert ask(svc, "owner", "owner-list@lists.example") == "OK"
    assert ask(svc, "list", "list-request@lists.example") == "OK"
    # the special names are never split, whatever the setting
    assert answer(ask(svc, "mailer", "mailer-daemon@lists.example")) == "reject"


def test_smtputf8_off_lowercases_ascii_only(tmp_path: Path) -> None:
    svc = service(tmp_path, {**ADDRESSES, "smtputf8_enable": False})
    assert answer(ask(svc, "strasse", "Straße@example.org")) == "reject"
    assert ask(svc, "strasse", "STRASSE@example.org") == "OK"
    rules = AddressRules(smtputf8=False)
    assert fold_local("ÄBC", rules) == "Äbc"
    assert fold_local("ÄBC", AddressRules()) == "äbc"
    assert fold_local("Straße", AddressRules()) == "strasse"
    assert "Straße".lower() == "straße"  # (what the old code did: neither of the two)


def test_split_extension_rules() -> None:
    r = AddressRules(extension_delimiters="+-")
    assert split_extension("alice+tag", r) == "alice"
    assert split_extension("alice-tag+x", r) == "alice"
    assert split_extension("+lead+x", r) == "+lead+x"
    assert split_extension("-x", r) == "-x"
    for name in ("postmaster", "MAILER-DAEMON", "double-bounce", "owner-list", "list-request"):
        assert split_extension(name, r) == name
    assert split_extension("-request", r) == "-request"  # (Postfix: longer than "-request")
    assert split_extension("owner-x", AddressRules(extension_delimiters="+")) == "owner-x"
    assert split_extension("owner+x", AddressRules(extension_delimiters="+")) == "owner"
    assert split_extension("a-request+x", AddressRules(extension_delimiters="+")) == "a-request"


# ---------------------------------------------------------------------------------------------
# Property: policyd's keys agree with a model of Postfix's resolver and split_addr
#
# The model, from the documentation:
# - smtpd hands the sender on in internal (unquoted) form; trivial-rewrite quotes the local
#   part again where RFC 822 requires (quote_822_local) and reads the address as RFC 822
#   tokens: a quoted local part is ONE token, otherwise "!", "%", "@", "." are operators.
# - trivial-rewrite(8) resolve: "strip off all instances of the local domain" ($mydestination),
#   then, without "@": swap_bangpath "site!user => user@site" (first "!"), else
#   allow_percent_hack "user%domain => user@domain" (last "%"); resolve_dequoted (default yes):
#   a quoted local part is opened and its last "@", else last "%", else "!" routes. Repeat.
#   The stripped local domain is put back at the end.
# - smtpd_sender_login_maps (access(5) "EMAIL ADDRESS PATTERNS"): user@domain, then (with
#   recipient_delimiter) user@domain without the extension, then @domain; keys are case-folded
#   (smtputf8_enable=yes: Unicode case folding).
# - recipient_delimiter: the extension starts at the first delimiter character; postmaster,
#   mailer-daemon, double-bounce are never split, nor (owner_request_special) owner-* and
#   *-request when "-" is a delimiter, nor a local part that begins with a delimiter.

MYDEST = frozenset({"example.org"})
DELIMS = "+-"
_SPECIALS = set('()<>@,;:\\"[] ')


def _quoted(local: str) -> bool:
    return (
        not local
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
        or any(c in _SPECIALS or ord(c) < 32 for c in local)
    )


def _tokens(local: str) -> list[str]:
    """RFC 822 tokens of an unquoted local part: operators alone, atoms between them."""
    return [t for t in re.split(r"([!%@.])", local) if t]


def model_resolve(internal: str, mydest: frozenset[str] = MYDEST) -> str:
    addr = internal
    if addr.startswith("@") and ":" in addr[:-1]:
        addr = addr.split(":", 1)[1]  # "source routes are ignored"
    head, at, tail = addr.rpartition("@")
    # the tree: ("q", text) for a quoted local part, or a list of tokens; the domain apart
    local: tuple[str, Any] = ("q", head if at else tail)
    domain: str | None = tail if at else None
    if not _quoted(local[1]):
        local = ("t", _tokens(local[1]))
    saved = None
    while True:
        if domain is not None:
            d = domain[:-1] if domain.endswith(".") and not domain.endswith("..") else domain
            if d.lower() not in mydest:
                return _text(local) + "@" + d
            saved, domain = d, None
        if local[0] == "t":
            toks = local[1]
            if "!" in toks:
                i = toks.index("!")
                local, domain = ("t", toks[i + 1 :]), "".join(toks[:i])
                continue
            if "%" in toks:
                i = len(toks) - 1 - toks[::-1].index("%")
                local, domain = ("t", toks[:i]), "".join(toks[i + 1 :])
                continue
            break
        text = local[1]
        for op in ("@", "%"):
            if op in text:
                user, _, dom = text.rpartition(op)
                local = ("q", user) if _quoted(user) else ("t", _tokens(user))
                domain = dom
                break
        else:
            if "!" in text:
                toks = _tokens(text)
                local = ("t", toks)
                continue
            break
    return _text(local) + ("@" + saved if saved else "")


def _text(local: tuple[str, Any]) -> str:
    return str(local[1]) if local[0] == "q" else "".join(local[1])


def model_keys(internal: str, mydest: frozenset[str] = MYDEST) -> tuple[str, ...]:
    """The lookup keys; the domain compared as policyd compares domains (IDNA 2008: the
    README's deliberate exception, tested apart)."""
    resolved = model_resolve(internal, mydest)
    user, at, domain = resolved.rpartition("@")
    if not at:
        return (resolved.casefold(),)
    user, domain = user.casefold(), normalize_domain(domain)
    if not domain:  # (an empty domain: no key but the address; none has an owner)
        return (f"{user}@",)
    keys = [f"{user}@{domain}"]
    unsplit = (
        user in ("postmaster", "mailer-daemon", "double-bounce")
        or user.startswith("owner-")
        or (user.endswith("-request") and len(user) > len("-request"))
        or user[:1] in DELIMS
    )
    cut = min((user.index(c) for c in DELIMS if c in user), default=-1)
    if not unsplit and cut > 0:
        keys.append(user[:cut] + "@" + domain)
    keys.append("@" + domain)
    return tuple(keys)


LOCAL_CHARS = st.sampled_from(list("abAB+-.!%@ ß") + ["x", "y"])
SPECIAL = st.sampled_from(
    ["postmaster", "MAILER-DAEMON", "double-bounce", "owner-x", "x-request", "-request"]
)
LOCAL = st.one_of(
    st.text(LOCAL_CHARS, min_size=1, max_size=12),
    st.tuples(SPECIAL, st.text(LOCAL_CHARS, max_size=4)).map("".join),
)
DOMAIN = st.sampled_from(["example.org", "EXAMPLE.org", "other.example", "lists.example", "x"])
RULES = AddressRules(extension_delimiters=DELIMS, mydestination=MYDEST)


def _external(local: str, domain: str | None, quote: bool) -> str:
    """The MAIL FROM form a client writes (quoted when asked or needed)."""
    if quote or _quoted(local) or '"' in local:
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return local if domain is None else f"{local}@{domain}"


@settings(max_examples=600, deadline=None)
@given(LOCAL, st.one_of(st.none(), DOMAIN), st.booleans())
@example("example.org!alice", None, False)
@example("alice%example.org", None, False)
@example("bob%other.example", "example.org", False)
@example("+lead+x", "example.org", False)
@example("owner-list+news", "lists.example", False)
@example("a b%example.org", None, True)
@example("x!.y%z", "example.org", False)
@example("Straße", "example.org", True)
def test_keys_agree_with_the_postfix_model(local: str, domain: str | None, quote: bool) -> None:
    written = _external(local, domain, quote)
    internal = envelope_sender(written)
    assert internal == (local if domain is None else f"{local}@{domain}")
    assert candidates(internal, RULES) == model_keys(internal)


@settings(max_examples=300, deadline=None)
@given(LOCAL, st.one_of(st.none(), DOMAIN))
def test_keys_agree_with_the_postfix_model_without_mydestination(
    local: str, domain: str | None
) -> None:
    internal = local if domain is None else f"{local}@{domain}"
    rules = AddressRules(extension_delimiters=DELIMS)
    assert candidates(internal, rules) == model_keys(internal, frozenset())


@given(LOCAL, DOMAIN)
def test_a_source_route_is_dropped(local: str, domain: str) -> None:
    written = f"<@relay.example,@r2.example:{_external(local, domain, False)}>"
    assert envelope_sender(written) == f"{local}@{domain}"


# ---------------------------------------------------------------------------------------------
# IDNA 2008 (UTS #46 non-transitional): look-alike domains stay apart


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("straße.de", "strasse.de"),  # sharp s (a deviation character)
        ("fußball-x.example", "fussball-x.example"),
        ("ςa.example", "σa.example"),  # final sigma
        ("a\u200cb.example", "ab.example"),  # ZWNJ: refused here, so never "ab.example"
    ],
)
def test_deviation_characters_are_not_folded(a: str, b: str) -> None:
    assert normalize_domain(a) != normalize_domain(b)
    assert normalize_address(f"x@{a}") != normalize_address(f"x@{b}")
    assert candidates(f"x@{a}") != candidates(f"x@{b}")


def test_idna_forms() -> None:
    assert idna_domain("Bücher.Example.") == "xn--bcher-kva.example"
    assert idna_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert idna_domain("ＥＸＡＭＰＬＥ.org") == "example.org"  # UTS #46 mapping
    assert idna_domain("straße.de") == "xn--strae-oqa.de"
    assert idna_domain("Under_Score.example") == "under_score.example"  # ASCII: lowercase only
    for bad in ("ex\u200dample.org", "xn--zz.example", "\u0300a.example"):
        with pytest.raises(InvalidDomain):
            idna_domain(bad)
        # compared, such a domain keeps a form no valid key has
        with pytest.raises(InvalidDomain):
            idna_domain(normalize_domain(bad))


def test_one_domain_owner_cannot_send_as_the_ss_domain() -> None:
    """Issue 23: a user who owns (or verified) x@fussball-x.example sends as
    x@fußball-x.example: the policy and the milter must refuse it."""
    d = StaticDirectory.from_lines(["alice: x@fussball-x.example"], AddressRules())
    owned = d.addresses_of("alice")
    assert not any(k in owned for k in candidates("x@fußball-x.example"))
    assert any(k in owned for k in candidates("X@FUSSBALL-x.example"))


def test_milter_header_from_uses_idna_2008() -> None:
    from policyd.config import ProfileConfig
    from policyd.core.engine import decide_header_from
    from policyd.milter.headers import author_mailboxes

    rules = AddressRules()
    profile = ProfileConfig(name="submission", role="submission")
    owned = frozenset({"x@fussball-x.example"})
    for header, verdict in (
        ("x@fussball-x.example", "accept"),
        ("x@fußball-x.example", "reject"),
        ("x@FUSSBALL-X.example", "accept"),
    ):
        author = author_mailboxes([("From", header)], rules)
        assert author.mailboxes is not None
        d = decide_header_from(
            "alice", author.mailboxes, profile, owned, rules, key_owners={}, sources=author.sources
        )
        assert d.verdict.value == verdict, (header, d)


def test_file_directory_refuses_a_domain_idna_refuses() -> None:
    with pytest.raises(DirectoryError, match=r"senders.txt:2: .*IDNA 2008"):
        StaticDirectory.from_lines(
            ["alice: a@example.org", "bob: b@ex\u200dample.org"], AddressRules(), "senders.txt"
        )


def test_ldap_values_with_a_refused_domain_own_nothing() -> None:
    entry = {"raw_attributes": {"mail": ["a@ex\u200dample.org".encode(), b"b@example.org"]}}
    assert entry_addresses(entry, ["mail"], AddressRules()) == ["b@example.org"]


def test_file_directory_refuses_two_forms_of_one_address_for_different_logins() -> None:
    lines = ["alice: x@bücher.example", "bob: y@example.org", "bob: x@XN--BCHER-KVA.example"]
    with pytest.raises(DirectoryError) as e:
        StaticDirectory.from_lines(lines, AddressRules(), "senders.txt")
    msg = str(e.value)
    assert "senders.txt:1 and senders.txt:3" in msg and "alice / bob" in msg
    # the same logins under both forms, or one form only: fine (one address)
    ok = StaticDirectory.from_lines(
        [
            "alice, bob: x@bücher.example",
            "bob: x@xn--bcher-kva.example",
            "alice: x@xn--bcher-kva.example",
        ],
        AddressRules(),
    )
    assert ok.owners_of("x@xn--bcher-kva.example") == {"alice", "bob"}
    # the @domain form as well
    with pytest.raises(DirectoryError):
        StaticDirectory.from_lines(
            ["a: @bücher.example", "b: @xn--bcher-kva.example"], AddressRules()
        )


def test_config_check_names_both_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from policyd.cli import main

    (tmp_path / "senders.txt").write_text(
        "alice: x@bücher.example\nbob: x@xn--bcher-kva.example\n", encoding="utf-8"
    )
    (tmp_path / "p.toml").write_text(
        '[networks]\nfiles = []\n[directory]\nbackend = "file"\nfile = "senders.txt"\n',
        encoding="utf-8",
    )
    rc = main(["config-check", "--config", str(tmp_path / "p.toml")])
    cap = capsys.readouterr()
    err = cap.out + cap.err
    assert rc == 1
    assert f"{tmp_path / 'senders.txt'}:1 and {tmp_path / 'senders.txt'}:2" in err, err


# ---------------------------------------------------------------------------------------------
# Verification: what may be requested


@pytest.mark.parametrize(
    ("address", "want"),
    [
        ("x@fußball-x.example", "x@xn--fuball-x-rya.example"),
        ("x@fussball-x.example", "x@fussball-x.example"),
        ("x@σς.example", "x@xn--3xab.example"),  # final sigma kept
        ("x@σσ.example", "x@xn--4xaa.example"),
    ],
)
def test_verification_keeps_idna_2008_forms(address: str, want: str) -> None:
    assert normalize_request(address, AddressRules()) == want


@pytest.mark.parametrize(
    "address",
    ["a%b@example.net", "example.org!a@example.net", "a!b@example.net", "x@xn--zz.example"],
)
def test_verification_refuses_routing_forms_and_bad_idna(address: str) -> None:
    with pytest.raises(BadAddress) as e:
        normalize_request(address, AddressRules())
    assert e.value.code == "bad_syntax"


# ---------------------------------------------------------------------------------------------
# Config


FILE_DIR = {"directory": {"backend": "file", "file": "senders.txt"}}


def test_config_defaults_mirror_postfix_defaults(tmp_path: Path) -> None:
    c = config_from_dict(FILE_DIR, "t.toml", tmp_path)
    r = c.addresses.rules()
    assert (r.smtputf8, r.swap_bangpath, r.percent_hack, r.owner_request_special) == (
        True,
        True,
        True,
        True,
    )
    assert r.mydestination == frozenset()
    c = config_from_dict(
        {**FILE_DIR, "addresses": {"mydestination": ["Bücher.example."]}}, "t.toml", tmp_path
    )
    assert c.addresses.rules().mydestination == {"xn--bcher-kva.example"}


@pytest.mark.parametrize("bad", ["", "a b.example", "ex\u200dample.org", "@example.org"])
def test_config_mydestination_must_be_domains(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {**FILE_DIR, "addresses": {"mydestination": ["ok.example", bad]}}, "t.toml", tmp_path
        )
    assert e.value.key == "addresses.mydestination[1]"


# ---------------------------------------------------------------------------------------------
# policyd check --sender: what the daemon sees behind Postfix


def test_check_strips_the_source_route_and_unquotes(tmp_path: Path) -> None:
    from policyd.cli import main

    (tmp_path / "senders.txt").write_text(SENDERS, encoding="utf-8")
    (tmp_path / "p.toml").write_text(
        '[networks]\nfiles = []\n[addresses]\nmydestination = ["example.org"]\n'
        '[directory]\nbackend = "file"\nfile = "senders.txt"\n',
        encoding="utf-8",
    )
    for sender in (
        "<@relay.example:alice@example.org>",
        '"alice"@example.org',
        "example.org!alice",
    ):
        out = io.StringIO()
        with redirect_stdout(out):
            rc = main(
                [
                    "check",
                    "-c",
                    str(tmp_path / "p.toml"),
                    "--client-address",
                    "203.0.113.9",
                    "--sasl-username",
                    "alice",
                    "--sender",
                    sender,
                ]
            )
        text = out.getvalue()
        assert rc == 0
        assert text.startswith("action=OK\nreason=sender_owned\n"), text
    assert "Postfix passes it as alice@example.org" in text or "resolves it to" in text


# ---------------------------------------------------------------------------------------------
# Properties of the address rules of issue 23 (IDNA 2008 deviations, "%" and "!")

DEVIATIONS = {"ß": "ss", "ς": "σ", "\u200d": "", "\u200c": ""}


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.sampled_from(list("abcxyzöü-")), min_size=1, max_size=8),
    st.sampled_from(sorted(DEVIATIONS)),
    st.integers(min_value=0, max_value=8),
)
def test_a_deviation_character_never_folds_into_another_domain(
    base: str, dev: str, at: int
) -> None:
    label = base[:at] + dev + base[at:]
    folded = label.replace(dev, DEVIATIONS[dev])  # what IDNA 2003 (transitional) made of it
    a, b = f"x@{label}.example", f"x@{folded}.example"
    assert candidates(a) != candidates(b)
    try:
        req = normalize_request(a, AddressRules())
    except BadAddress:
        return  # refused (a joiner, a bad hyphen, mixed scripts): never the other domain
    if _requestable(b):
        assert req != normalize_request(b, AddressRules())


def _requestable(address: str) -> bool:
    try:
        normalize_request(address, AddressRules())
    except BadAddress:
        return False
    return True


@given(
    st.text(st.sampled_from(list("ab.+-_")), max_size=5),
    st.sampled_from(["%", "!"]),
    st.text(st.sampled_from(list("ab.+-_")), max_size=5),
)
def test_routing_characters_are_never_requestable(pre: str, op: str, post: str) -> None:
    with pytest.raises(BadAddress):
        normalize_request(f"{pre}{op}{post}@example.net", AddressRules())
