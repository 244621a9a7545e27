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
    InvalidDomain,
    canonical_login,
    idna_domain,
    normalize_address,
    split_address,
)
from policyd.directory.base import DirectoryError

_NONE: frozenset[str] = frozenset()


class StaticDirectory:
    blocking = False

    def __init__(
        self,
        owned: dict[str, frozenset[str]],
        source: str = "<memory>",
        rules: AddressRules | None = None,
        lines: dict[str, str] | None = None,
    ) -> None:
        self._owned = owned
        #: login -> the first line naming it (whitespace folded, comment dropped): its identity
        self._lines = lines if lines is not None else {login: login for login in owned}
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
        # normalised address -> {written with a U-label?: (first line, logins)}: the two forms
        # of one address are one key here (one domain, one owner), so they must name the same
        # logins (Postfix would keep them apart).
        forms: dict[str, dict[bool, tuple[str, set[str]]]] = {}
        first: dict[str, str] = {}
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
                try:
                    idna_domain(split_address(a)[1])
                except InvalidDomain as e:
                    raise DirectoryError(
                        f"{where}: {a!r}: the domain is not valid under IDNA 2008 ({e})"
                    ) from None
            canon = {canonical_login(login, rules) for login in logins}
            text = " ".join(line.split())
            for login in canon:
                first.setdefault(login, text)
            norm = set()
            for a in addrs:
                key = normalize_address(a, rules)
                norm.add(key)
                unicode_form = not split_address(a)[1].isascii()
                _first_line, names = forms.setdefault(key, {}).setdefault(
                    unicode_form, (where, set())
                )
                names.update(canon)
            for login in canon:
                owned.setdefault(login, set()).update(norm)
        for key, by_form in forms.items():
            if len(by_form) == 2 and by_form[True][1] != by_form[False][1]:
                (u_line, u_logins), (a_line, a_logins) = by_form[True], by_form[False]
                raise DirectoryError(
                    f"{u_line} and {a_line}: {key} is registered in its U-label and its A-label "
                    f"form to different logins ({', '.join(sorted(u_logins))} / "
                    f"{', '.join(sorted(a_logins))}); policyd treats both forms as one address: "
                    "give both to the same logins, or keep one form"
                )
        return cls({k: frozenset(v) for k, v in owned.items()}, source, rules, first)

    # Directory protocol ---------------------------------------------------------------

    def addresses_of(self, login: str) -> frozenset[str]:
        return self._owned.get(login, frozenset())

    def owners_of(self, address: str) -> frozenset[str]:
        return self._owners.get(address, _NONE)

    def identity_of(self, login: str) -> frozenset[str]:
        line = self._lines.get(login)
        return frozenset() if line is None else frozenset({f"line={line}"})

    def close(self) -> None:
        pass

    # introspection for config-check ----------------------------------------------------

    @property
    def logins(self) -> int:
        return len(self._owned)

    @property
    def addresses(self) -> int:
        return len(self._owners)
