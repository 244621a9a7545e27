"""addresses.realms must not merge people: a check at config-check and at start.

With realms = ["example.org", "example.net"] the logins alice@example.org and alice@example.net
both become "alice". That is right for Cyrus SASL's smtpd_sasl_local_domain (one realm per
server, the bare user is the login) and wrong wherever the directory has an alice at each
domain: the one at example.net would send as the one at example.org. So, when two or more realms
are listed, the directory is read for every address at those domains, and a local part held
under two realm domains by different entries (LDAP) or logins (file) is an error naming both.
Two logins in the file directory that differ only in their realm domain are one too.
"""

from __future__ import annotations

from collections.abc import Iterable

from policyd.addresses import AddressRules, split_address
from policyd.directory.base import DirectoryError


def merge_problems(holders: Iterable[tuple[str, Iterable[str]]], rules: AddressRules) -> list[str]:
    """holders: (who, addresses it holds). One line per local part that two realm domains give
    to different holders (sorted; empty when realms cannot merge anybody)."""
    if len(rules.realms) < 2:
        return []
    by_local: dict[str, dict[str, set[str]]] = {}
    for who, addresses in holders:
        for a in addresses:
            local, domain = split_address(a)
            if local and domain in rules.realms:
                by_local.setdefault(local.lower(), {}).setdefault(domain, set()).add(who)
    problems: list[str] = []
    for local, domains in sorted(by_local.items()):
        names = sorted(domains)
        for i, d1 in enumerate(names):
            for d2 in names[i + 1 :]:
                for w1 in sorted(domains[d1]):
                    for w2 in sorted(domains[d2] - {w1}):
                        if w1 in domains[d2] and w2 in domains[d1]:
                            continue  # both hold both addresses: not two people by address
                        problems.append(
                            f"{local}@{d1} ({w1}) and {local}@{d2} ({w2}) are different "
                            f"entries, but addresses.realms makes both logins {local!r}"
                        )
    return problems


def refuse_merges(problems: list[str], source: str) -> None:
    """Raise DirectoryError naming the first merges (and how many there are)."""
    if not problems:
        return
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise DirectoryError(
        f"{source}: addresses.realms would merge different people: "
        + "; ".join(problems[:3])
        + more
        + ". realms is for Cyrus SASL's smtpd_sasl_local_domain only; with full-address "
        "logins (Dovecot %Lu) leave realms empty and key the directory by address"
    )
