"""The milter's decision for a message's author headers: the lookups it needs, then the engine.

Used by the milter (libmilter) and by `policyd check --header-from`; pure of pymilter.
"""

from __future__ import annotations

import logging
from typing import Final

from policyd.addresses import canonical_login
from policyd.config import ProfileConfig
from policyd.core.decision import Decision
from policyd.core.engine import decide_header_from
from policyd.directory.base import DirectoryUnavailable
from policyd.directory.cache import CachedLookups
from policyd.directory.lookups import DirectLookups, HeaderFacts, header_facts, peek_header_facts
from policyd.milter.headers import AuthorCheck
from policyd.runtime import Runtime

#: (not __name__: the name admins grep; this warning was logged by the policy service's module)
log: Final = logging.getLogger("policyd.service")


#: Lookups whose peeks may be called from a libmilter thread: the file directory's (immutable
#: dicts) and the cache's (a dict read under the GIL; a key evicted meanwhile raises KeyError,
#: and the decision then takes the lookup loop). Verified senders' peeks read SQLite, whose
#: connection belongs to the lookup loop's thread: never from here.
SAFE_PEEKS: Final = (DirectLookups, CachedLookups)


def decide_headers_now(
    rt: Runtime,
    profile: ProfileConfig,
    login: str,
    author: AuthorCheck,
    *,
    client: str = "",
    sender: str = "",
) -> Decision | None:
    """`decide_headers` without waiting, in the calling thread: the decision when every fact
    it needs is known at once, else None (ask `decide_headers` on the lookup loop). Saves the
    milter two thread switches per message (issue 29: 110 -> 12 us in-process)."""
    if type(rt.lookups) not in SAFE_PEEKS:
        return None
    login = login.strip()
    boxes = author.mailboxes
    facts: HeaderFacts | None = (None, None, None)
    if boxes and (login or profile.protect_local_senders):
        who = canonical_login(login, rt.rules) if login else ""
        shown = [a for _, a in author.display_addresses] if login else []
        try:
            facts = peek_header_facts(rt.lookups, who, [*boxes, *shown], rt.rules)
        except KeyError:  # (the cache evicted an entry between get and move_to_end)
            return None
    if facts is None:
        return None
    return _decide(rt, profile, login, author, facts, client=client, sender=sender)


async def decide_headers(
    rt: Runtime,
    profile: ProfileConfig,
    login: str,
    author: AuthorCheck,
    *,
    client: str = "",
    sender: str = "",
) -> Decision:
    """The milter's decision for a message's author headers (`login` as Postfix sent it),
    with the lookups it needs. Used by the milter and by `policyd check --header-from`."""
    login = login.strip()
    boxes = author.mailboxes
    facts: HeaderFacts = (None, None, None)
    unavailable = False
    if boxes and (login or profile.protect_local_senders):
        who = canonical_login(login, rt.rules) if login else ""
        shown = [a for _, a in author.display_addresses] if login else []
        try:
            facts = await header_facts(rt.lookups, who, [*boxes, *shown], rt.rules)
        except DirectoryUnavailable as e:
            log.warning("directory unavailable: %s", str(e))  # (str: see policy/service.py)
            unavailable = True
    return _decide(
        rt, profile, login, author, facts, client=client, sender=sender, unavailable=unavailable
    )


def _decide(
    rt: Runtime,
    profile: ProfileConfig,
    login: str,
    author: AuthorCheck,
    facts: HeaderFacts,
    *,
    client: str,
    sender: str,
    unavailable: bool = False,
) -> Decision:
    """The engine's decision over the facts looked up (`login` stripped)."""
    owned, key_owned, owners = facts
    return decide_header_from(
        login,
        author.mailboxes,
        profile,
        owned,
        rt.rules,
        client=client,
        sender=sender,
        directory_unavailable=unavailable,
        owners=owners,
        key_owners=key_owned,
        sources=author.sources,
        display=author.display_addresses,
    )
