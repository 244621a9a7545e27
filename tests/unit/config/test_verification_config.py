"""The [verification] section: documented, validated like the rest of the config."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from policyd.config import ConfigError, load_config
from policyd.config import verification as vconf
from policyd.verification.build import file_domains, local_domains

SHIPPED = Path(__file__).resolve().parents[3] / "conf" / "policyd.toml"


def test_every_verification_key_is_documented_with_its_default() -> None:
    doc = tomllib.loads(SHIPPED.read_text())["verification"]
    sub = {"mail": vconf.VerificationMailConfig, "ldap": vconf.VerificationLdapConfig,
           "limits": vconf.VerificationLimitsConfig}  # fmt: skip
    assert set(doc) == {f.name for f in dataclasses.fields(vconf.VerificationConfig)}
    for name, cls in sub.items():
        assert set(doc[name]) == {f.name for f in dataclasses.fields(cls)}, name
    assert load_config(SHIPPED).verification == vconf.VerificationConfig()


def load(tmp_path: Path, text: str):
    (tmp_path / "senders.txt").write_text("alice: alice@example.org, @Shop.Example\n")
    p = tmp_path / "policyd.toml"
    p.write_text('[directory]\nfile = "senders.txt"\n' + text)
    return load_config(p)


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[verification]\nenabeld = true\n", "verification.enabeld", "unknown key"),
        ("[verification.mail]\nsmtp_prot = 25\n", "verification.mail.smtp_prot", "unknown key"),
        ('[verification]\nstore = "file"\n', "verification.store", "must be one of"),
        ("[verification]\ncode_tries = 0\n", "verification.code_tries", "greater than 0"),
        ("[verification]\ncode_ttl = 300000.0\n", "verification.code_ttl", "token_ttl"),
        ("[verification.mail]\nsmtp_port = 0\n", "verification.mail.smtp_port", "TCP port"),
        (
            '[verification.mail]\nfrom_address = "Me <a@b.c>"\n',
            "verification.mail.from_address",
            "plain address",
        ),
        (
            '[verification.mail]\nsubject = "Hi {login}"\n',
            "verification.mail.subject",
            "unknown placeholder {login}",
        ),
        (
            '[verification.mail]\nbody = "{address} {code} {link}"\n',
            "verification.mail.body",
            "unknown placeholder {address}",
        ),
        ('[verification.mail]\nbody = "no code"\n', "verification.mail.body", "{code} and {link}"),
        ('[verification]\nsite_name = "a\\nb"\n', "verification.site_name", "printable"),
        ('[verification]\nlink_base_url = "javascript:x"\n', "verification.link_base_url", "http"),
        (
            '[verification.ldap]\nattribute = "mailLocalAddress"\n',
            "verification.ldap.attribute",
            "recipient alias",
        ),
        (
            '[verification]\nenabled = true\nstore = "ldap"\n',
            "verification.store",
            "directory.backend",
        ),
    ],
)
def test_bad_values_name_the_key_and_why(tmp_path: Path, text: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert e.value.key == key and why in e.value.why


def test_with_ldap_local_domains_and_the_writer_must_be_set(tmp_path: Path) -> None:
    base = '[directory]\nbackend = "ldap"\n[verification]\nenabled = true\n'
    p = tmp_path / "p.toml"
    p.write_text(base)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == "verification.local_domains" and "must be set" in e.value.why
    p.write_text(base + 'store = "ldap"\nlocal_domains = ["example.org"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == "verification.ldap.writer_bind_dn"
    p.write_text(
        base + 'store = "ldap"\nlocal_domains = ["example.org"]\n[verification.ldap]\n'
        'writer_bind_dn = "cn=w,dc=example,dc=org"\nwriter_password_file = "pw"\n'
    )
    assert load_config(p).verification.ldap.writer_password_file == tmp_path / "pw"


def test_local_domains_default_to_the_file_directorys_domains(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[verification]\nenabled = true\n")
    assert local_domains(cfg) == {"example.org", "shop.example"}
    assert file_domains(tmp_path / "senders.txt") == {"example.org", "shop.example"}
    cfg = load(tmp_path, '[verification]\nlocal_domains = ["Other.Example"]\n')
    assert local_domains(cfg) == {"other.example"}
