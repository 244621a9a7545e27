"""The embedded directory: a human-editable file of logins and the addresses they own.

    # comment
    alice:  alice@example.org, alice.smith@example.org
    bob:    bob@example.org
    carol:  @carol.example            # the whole domain
    alice, bob: sales@example.org     # a shared address: several logins on one line

A login may appear on several lines; its addresses add up. An address may belong to several
logins. Logins and addresses are normalised with the configured AddressRules.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from policyd.addresses import (
    AddressRules,
    canonical_login,
    normalize_address,
)
from policyd.directory.base import DirectoryError
from policyd.directory.realms import merge_problems, refuse_merges

_NONE: frozenset[str] = frozenset()


class StaticDirectory:
    blocking = False

    def __init__(
        self,
        owned: dict[str, frozenset[str]],
        source: str = "<memory>",
        rules: AddressRules | None = None,
    ) -> None:
        self._owned = owned
        self._rules = rules or AddressRules()
        owners: dict[str, set[str]] = {}
        for login, addrs in owned.items():
            for a in addrs:
                owners.setdefault(a, set()).add(login)
        self._owners = {a: frozenset(s) for a, s in owners.items()}
        self.source = source

    @classmethod
    def load(cls, path: Path | str, rules: AddressRules) -> StaticDirectory:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DirectoryError(f"{p}: not UTF-8 ({e.reason} at byte {e.start})") from e
        except OSError as e:
            raise DirectoryError(f"{p}: cannot read: {e.strerror or e}") from e
        return cls.from_lines(text.splitlines(), rules, source=str(p))

    @classmethod
    def from_lines(
        cls, lines: Iterable[str], rules: AddressRules, source: str = "<string>"
    ) -> StaticDirectory:
        owned: dict[str, set[str]] = {}
        realm_logins: dict[str, dict[str, str]] = {}  # canonical login -> realm -> where
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{n}"
            head, colon, tail = line.partition(":")
            if not colon:
                raise DirectoryError(
                    f"{where}: expected 'LOGIN: address, address…', got {raw.strip()!r}"
                )
            logins = [x for x in head.replace(",", " ").split()]
            addrs = [x for x in tail.replace(",", " ").split()]
            if not logins:
                raise DirectoryError(f"{where}: no login before ':'")
            if not addrs:
                raise DirectoryError(f"{where}: no address after ':'")
            for a in addrs:
                if "@" not in a or a.endswith("@") or "=" in a:
                    raise DirectoryError(
                        f"{where}: {a!r} is not an address (user@domain) or a domain (@domain)"
                    )
            norm = {normalize_address(a, rules) for a in addrs}
            for login in logins:
                canonical = canonical_login(login, rules)
                owned.setdefault(canonical, set()).update(norm)
                if canonical != login.lower() and "@" in login:
                    seen = realm_logins.setdefault(canonical, {})
                    seen.setdefault(login.rpartition("@")[2].lower(), f"{login} ({where})")
        problems = [
            f"{' and '.join(sorted(seen.values()))} are different logins, but addresses.realms "
            f"makes both {canonical!r}"
            for canonical, seen in sorted(realm_logins.items())
            if len(seen) > 1
        ]
        problems += merge_problems(owned.items(), rules)
        refuse_merges(problems, source)
        return cls({k: frozenset(v) for k, v in owned.items()}, source, rules)

    # Directory protocol ---------------------------------------------------------------

    def addresses_of(self, login: str) -> frozenset[str]:
        return self._owned.get(login, frozenset())

    def owners_of(self, address: str) -> frozenset[str]:
        return self._owners.get(address, _NONE)

    def close(self) -> None:
        pass

    # introspection for config-check ----------------------------------------------------

    @property
    def logins(self) -> int:
        return len(self._owned)

    @property
    def addresses(self) -> int:
        return len(self._owners)
