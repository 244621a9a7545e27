"""Verifying grants exactly the address verified (issue 23, section 1), as a property: for any
foreign address a login verified, the policy service (file directory, verification database,
the real lookups) accepts that address in any case, and refuses every extension variant of it
(`+` or `-`, both our delimiters here): the foreign domain may give those to someone else. Our
own domains keep the delimiter rules."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.config import load_config
from policyd.core.request import Request
from policyd.directory.static import StaticDirectory
from policyd.policy.service import PolicyService
from policyd.runtime import build_runtime
from policyd.verification.build import build
from policyd.verification.views import Actor, Refused

CONFIG = """
[directory]
file = "senders.txt"
[addresses]
extension_delimiters = "+-"
[profiles.submission]
role = "submission"
[verification]
enabled = true
database = "{db}"
[verification.mail]
smtp_host = "127.0.0.1"
smtp_port = 9
"""


class World:
    def __init__(self, d: Path) -> None:
        (d / "senders.txt").write_text("alice: alice@example.org\nbob: bob@example.org\n")
        cfg_path = d / "policyd.toml"
        cfg_path.write_text(CONFIG.format(db=d / "senders.sqlite"))
        config = load_config(cfg_path)
        self.directory = StaticDirectory.load(d / "senders.txt", config.addresses.rules())
        self.api = build(config, self.directory)
        self.runtime = build_runtime(config)
        self.service = PolicyService(self.runtime)

    def verify(self, login: str, address: str) -> None:
        try:
            self.api.add_unverified(login, address, actor=Actor("cli"))
        except Refused as e:
            assert e.code == "already_owned", e.code

    def reason(self, login: str, sender: str) -> str:
        attrs = {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "client_address": "192.0.2.50",
            "sasl_username": login,
            "sasl_method": "PLAIN",
            "sender": sender,
            "recipient": "friend@external.test",
        }
        _, d = asyncio.run(self.service.decide(Request.from_attrs(attrs)))
        return str(d.reason.value)

    def close(self) -> None:
        self.runtime.close()
        self.api.store.close()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    d = Path(tempfile.mkdtemp(prefix="policyd-exact-"))
    w = World(d)
    try:
        yield w
    finally:
        w.close()
        shutil.rmtree(d, ignore_errors=True)


LOCAL = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8})?", fullmatch=True)
EXT = st.from_regex(r"[a-z0-9][a-z0-9+-]{0,7}", fullmatch=True)
DOMAIN = st.sampled_from(["elsewhere.test", "mail.gmail.example", "partner.example"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(local=LOCAL, ext=EXT, delimiter=st.sampled_from("+-"), domain=DOMAIN)
def test_a_verified_address_grants_itself_and_none_of_its_extensions(
    world: World, local: str, ext: str, delimiter: str, domain: str
) -> None:
    address = f"{local}@{domain}"
    world.verify("alice", address)
    assert world.reason("alice", address) == "sender_owned"
    assert world.reason("alice", address.upper()) == "sender_owned"
    variant = f"{local}{delimiter}{ext}@{domain}"
    assert world.reason("alice", variant) == "sender_not_owned", variant
    assert world.reason("bob", address) == "sender_not_owned"


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ext=EXT, delimiter=st.sampled_from("+-"))
def test_our_own_domains_keep_the_delimiter_rules(world: World, ext: str, delimiter: str) -> None:
    assert world.reason("alice", f"alice{delimiter}{ext}@example.org") == "sender_owned"
    assert world.reason("bob", f"alice{delimiter}{ext}@example.org") == "sender_not_owned"


# -- a running service sees a directory change through its cache (no command) ----------------


class _Swappable:
    """A directory the test replaces underneath the cache (as an admin edits LDAP)."""

    blocking = False

    def __init__(self, text: str) -> None:
        self.set(text)

    def set(self, text: str) -> None:
        from policyd.addresses import AddressRules

        self.d = StaticDirectory.from_lines(text.splitlines(), AddressRules())

    def addresses_of(self, login: str) -> frozenset[str]:
        return self.d.addresses_of(login)

    def owners_of(self, address: str) -> frozenset[str]:
        return self.d.owners_of(address)

    def identity_of(self, login: str) -> frozenset[str]:
        return self.d.identity_of(login)

    def close(self) -> None:
        pass


def test_a_running_service_applies_a_directory_change_after_the_cache_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policyd.config import CacheConfig
    from policyd.directory.cache import CachedLookups, LookupRunner
    from policyd.verification import lookups as sourced
    from policyd.verification.source import VerifiedSource
    from tests.verification_helpers import DIRECTORY, make_api

    monkeypatch.setattr(sourced, "MEMO_SECONDS", 0.0)  # (the cache's TTL is what is tested)
    api, _, _ = make_api(tmp_path)
    api.add_unverified("alice", "y@corp.test", actor=Actor("cli"))
    directory = _Swappable(DIRECTORY)
    now = [1000.0]
    cache = CachedLookups(
        LookupRunner(directory, 1, 1.0),
        CacheConfig(positive_ttl=30.0, negative_ttl=10.0),
        clock=lambda: now[0],
    )
    lookups = sourced.SourcedLookups(
        cache, [VerifiedSource(api.store.path)], 1.0, local_domains=frozenset({"example.org"})
    )

    async def alice_counts() -> bool:
        owned = await lookups.addresses_of("alice")
        owners = await lookups.owners_of("y@corp.test")
        assert ("y@corp.test" in owned) == ("alice" in owners)
        return "y@corp.test" in getattr(owned, "exact_only", ())

    try:
        assert asyncio.run(alice_counts())
        directory.set(DIRECTORY + "dave: @corp.test\n")  # the admin gives dave the domain
        assert asyncio.run(alice_counts())  # (the cached "nobody owns @corp.test", for now)
        now[0] += 11  # past negative_ttl
        assert not asyncio.run(alice_counts())
        assert asyncio.run(lookups.owners_of("@corp.test")) == {"dave"}
        directory.set(DIRECTORY)  # taken back
        now[0] += 31
        assert asyncio.run(alice_counts())
        # alice's line replaced: another account under the same login
        directory.set(DIRECTORY.replace("alice: alice@example.org", "alice: a@example.org"))
        now[0] += 31
        assert not asyncio.run(alice_counts())
    finally:
        lookups.close()
        api.store.close()
