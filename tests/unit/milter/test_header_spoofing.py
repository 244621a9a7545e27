"""Header spoofing cases against policyd.headers.author_mailboxes.

alice@example.org is the logged-in user's address, ceo@example.org the one she must not show.
Every row either parses to exactly the mailboxes a mail client shows as the author (with the
header each came from) plus every address-like text in a display name or comment, or is
refused as invalid (mailboxes None, with a problem).

The "espoofer" rows follow the header cases of the espoofer tool (github.com/chenjj/espoofer,
testcases.py; Chen et al., "Composition Kills", USENIX Security 2020), rewritten for these two
addresses; the "CVE-2023-27043" rows are the malformed addresses of python/cpython#102988.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from policyd.milter.headers import author_mailboxes

A = "alice@example.org"
CEO = "ceo@example.org"


@dataclass(frozen=True)
class Shows:
    """The mailboxes as (header, mailbox) and the display addresses as (header, address)."""

    sources: tuple[tuple[str, str], ...]
    display: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Invalid:
    why: str


def f(value: str) -> list[tuple[str, str]]:
    return [("From", value)]


ROWS = [
    # -- the display-name cases of the issue -------------------------------------------------
    ("a quoted display name holding another address", f(f'"{CEO}" <{A}>'),
     Shows((("From", A),), (("From", CEO),))),
    ("a Q-encoded display name holding another address",
     f(f"=?utf-8?q?ceo=40example=2Eorg?= <{A}>"), Shows((("From", A),), (("From", CEO),))),
    ("a B-encoded display name decoding to another address in brackets",
     f(f"=?utf-8?B?PGNlb0BleGFtcGxlLm9yZz4=?= <{A}>"), Shows((("From", A),), (("From", CEO),))),
    ("a comment after the address holding another address", f(f"{A} ({CEO})"),
     Shows((("From", A),), (("From", CEO),))),
    ("a comment after the angle address holding another one in brackets",
     f(f"<{A}> (<{CEO}>)"), Shows((("From", A),), (("From", CEO),))),
    ("a display name repeating the sender's own address", f(f'"{A}" <{A}>'),
     Shows((("From", A),), (("From", A),))),
    ("an unquoted display name repeating the sender's own address (invalid: '@' is no atom)",
     f(f"{A} <{A}>"), Invalid("")),  # (3.11: our parser's "unquoted '@'"; 3.13: email's)
    ("a plain display name", f(f"Alice Smith <{A}>"), Shows((("From", A),))),
    # -- espoofer: multiple From headers and From/Sender/Resent-From ambiguity ----------------
    ("espoofer A8 two From headers", [("From", f"<{A}>"), ("From", f"<{CEO}>")],
     Invalid("2 From: headers")),
    ("espoofer A9 a second From with a space before the name",
     [(" From", f"<{A}>"), ("From", f"<{CEO}>")], Invalid("2 From: headers")),
    ("espoofer A10 a second From with a space before the colon",
     [("From", f"<{A}>"), ("From ", f"<{CEO}>")], Invalid("2 From: headers")),
    ("espoofer A11 a second From folded before the colon",
     [("From\r\n ", f" <{A}>"), ("From", f"<{CEO}>")], Invalid("2 From: headers")),
    ("espoofer A12 a Sender with another address is reported as Sender",
     [("From\r\n ", f" <{A}>"), ("Sender", f"<{CEO}>")],
     Shows((("From", A), ("Sender", CEO)))),
    ("espoofer A13 a Resent-From with another address is reported as Resent-From",
     [("From", f"<{A}>"), ("Resent-From", f"<{CEO}>")],
     Shows((("From", A), ("Resent-From", CEO)))),
    ("espoofer A14 two addresses in From are both authors", f(f"<{A}>, <{CEO}>"),
     Shows((("From", A), ("From", CEO)))),
    ("espoofer A15 an encoded word standing for an address is not a mailbox",
     f(f"=?utf-8?B?PGNlb0BleGFtcGxlLm9yZz4=?=,<{A}>"), Invalid("not a valid local part")),
    ("espoofer A16 a route is not part of the address a client shows",
     f(f"<@example.net:{CEO}>"), Shows((("From", CEO),))),
    ("espoofer A16 a two-hop route is refused as ambiguous",
     f(f"<@attack.example,@any.example:{CEO}>"), Invalid("ambiguous")),
    ("espoofer A17 a quoted pair outside quotes is refused", f(f"<{CEO}>\\,<{A}>"),
     Invalid("ambiguous")),
    ("espoofer A18 a bare address then an angle address are both authors",
     f(f"{CEO},<{A}>"), Shows((("From", CEO), ("From", A)))),
    ("espoofer A19 an address right after the angle address is refused", f(f"<{A}>{CEO}"),
     Invalid("ambiguous")),
    # -- groups --------------------------------------------------------------------------------
    ("a group's mailboxes are all authors", f(f"Team: {A}, {CEO};"),
     Shows((("From", A), ("From", CEO)))),
    ("a group name that is an address is refused", f(f"{CEO}: {A};"), Invalid("ambiguous")),
    ("a quoted group name that is an address is a display address", f(f'"{CEO}": {A};'),
     Shows((("From", A),), (("From", CEO),))),
    ("a group without its semicolon is refused", f(f"Team: {A}"), Invalid("';'")),
    ("an empty group and a mailbox", f(f"Team:;, {A}"), Shows((("From", A),))),
    ("only an empty group is no author", f("undisclosed-recipients:;"), Invalid("no mailbox")),
    ("a nested group is refused", f(f"A: B: {A};;"), Invalid("")),
    # -- encoded words -------------------------------------------------------------------------
    ("two encoded words folded together spell another address",
     f(f"=?utf-8?q?ceo?=\r\n =?utf-8?q?=40example.org?= <{A}>"),
     Shows((("From", A),), (("From", CEO),))),
    ("an encoded word inside quotes is decoded as clients do",
     f(f'"=?utf-8?q?ceo=40example.org?=" <{A}>'), Shows((("From", A),), (("From", CEO),))),
    ("an encoded word spelling quotes and an address",
     f(f"=?utf-8?q?=22ceo=22=40example.org?= <{A}>"), Shows((("From", A),), (("From", CEO),))),
    ("a UTF-7 encoded at sign", f(f"=?utf-7?q?ceo+AEA-example.org?= <{A}>"),
     Shows((("From", A),), (("From", CEO),))),
    ("a B-encoded comment", f(f"{A} (=?utf-8?b?Y2VvQGV4YW1wbGUub3Jn?=)"),
     Shows((("From", A),), (("From", CEO),))),
    ("an encoded word with an unknown charset is refused",
     f(f"=?x-unknown?q?ceo=40example.org?= <{A}>"), Invalid("malformed")),
    ("an encoded word as the local part is refused", f("=?utf-8?q?ceo?=@example.org"),
     Invalid("")),
    ("an encoded word inside the angle address is refused",
     f("Bob <=?utf-8?q?ceo?=@example.org>"), Invalid("")),
    # -- quoted pairs, comments, nested comments ------------------------------------------------
    ("a quoted pair hiding the at sign in a display name", f(f'"ceo\\@example.org" <{A}>'),
     Shows((("From", A),), (("From", CEO),))),
    ("escaped quotes around an address in a display name",
     f(f'"\\"{CEO}\\"" <{A}>'), Shows((("From", A),), (("From", CEO),))),
    ("a quoted pair in a comment before the address", f(f"(ceo\\@example.org) {A}"),
     Shows((("From", A),), (("From", CEO),))),
    ("a comment inside the address", f(f"alice({CEO})@example.org"),
     Shows((("From", A),), (("From", CEO),))),
    ("a comment inside the angle address", f(f"<alice({CEO})@example.org>"),
     Shows((("From", A),), (("From", CEO),))),
    ("a nested comment", f(f"{A} (x (y {CEO}) z)"), Shows((("From", A),), (("From", CEO),))),
    ("an unbalanced nested comment is refused", f(f"{A} ((x {CEO})"), Invalid("comment")),
    ("a comment-only entry in the list", f(f"<{A}>, ({CEO})"),
     Shows((("From", A),), (("From", CEO),))),
    ("a comment splitting a display name from an address",
     f(f'"ceo"(x)"@example.org" <{A}>'), Shows((("From", A),), (("From", CEO),))),
    # -- route addresses and quoted local parts ------------------------------------------------
    ("a one-hop route", f(f"<@route.example:{A}>"), Shows((("From", A),))),
    ("a needlessly quoted local part is the plain mailbox", f('"alice"@example.org'),
     Shows((("From", A),))),
    ("a quoted local part holding an address is its own mailbox",
     f('"ceo@example.org"@example.org'), Shows((("From", '"ceo@example.org"@example.org'),))),
    # -- folded quoted display names -----------------------------------------------------------
    ("a folded quoted display name", f(f'"Alice\r\n Smith" <{A}>'), Shows((("From", A),))),
    ("a folded display name repeating the own address", f(f'"{A}"\r\n <{A}>'),
     Shows((("From", A),), (("From", A),))),
    ("a fold inside a quoted address leaves a space, not an address",
     f(f'"ceo@\r\n example.org" <{A}>'), Shows((("From", A),))),
    # -- CVE-2023-27043 and its variants: a valid address followed by junk ---------------------
    ("CVE-2023-27043 a closing parenthesis before another address",
     f(f"{A})<{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 an opening parenthesis before another address",
     f(f"{A}(<{CEO}>"), Invalid("comment")),  # (3.11 "unterminated comment"; 3.13 "…inside…")
    ("CVE-2023-27043 a second opening bracket", f(f"{A}<<{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 a closing bracket", f(f"{A}><{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 an at sign", f(f"{A}@<{CEO}>"), Invalid("")),
    ("CVE-2023-27043 a semicolon", f(f"{A};<{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 a colon", f(f"{A}:<{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 a full stop", f(f"{A}.<{CEO}>"), Invalid("")),
    ("CVE-2023-27043 a double quote", f(f'{A}"<{CEO}>'), Invalid("ambiguous")),
    ("CVE-2023-27043 an opening square bracket", f(f"{A}[<{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 a closing square bracket", f(f"{A}]<{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 a backslash", f(f"{A}\\<{CEO}>"), Invalid("ambiguous")),
    ("CVE-2023-27043 a comma makes two mailboxes", f(f"{A},<{CEO}>"),
     Shows((("From", A), ("From", CEO)))),
    ("an unquoted address as display name of another", f(f"{CEO} <{A}>"),
     Invalid("ambiguous")),
    ("a second address after the angle address", f(f"Alice <{A}> {CEO}"),
     Invalid("ambiguous")),
    # -- null bytes, CR/LF injection -----------------------------------------------------------
    ("a null byte between two addresses", f(f"{A}\x00{CEO}"), Invalid("control")),
    ("a null byte in the display name", f(f'"ceo\x00" <{A}>'), Invalid("control")),
    ("a CR LF that starts a new From line", f(f"{A}\r\nFrom: {CEO}"), Invalid("control")),
    ("a bare LF that starts a new header", f(f"<{A}>\nSender: {CEO}"), Invalid("control")),
    ("a bare CR inside the address", f("alice\r@example.org"), Invalid("control")),
    ("a next-line character between two addresses", f(f"{A}\x85{CEO}"), Invalid("control")),
    ("a line separator before a second From", f(f"{A}\u2028From: {CEO}"), Invalid("control")),
    ("an encoded CR LF and From line in the display name",
     f(f"=?utf-8?q?Alice=0D=0AFrom=3A_ceo=40example.org?= <{A}>"),
     Shows((("From", A),), (("From", CEO),))),
    # -- unicode confusables -------------------------------------------------------------------
    ("a fullwidth at sign in the display name", f(f'"ceo\uff20example.org" <{A}>'),
     Shows((("From", A),), (("From", CEO),))),
    ("fullwidth letters in the display name", f(f'"\uff43\uff45\uff4f@example.org" <{A}>'),
     Shows((("From", A),), (("From", CEO),))),
    ("an ideographic full stop in the display name", f(f'"ceo@example\u3002org" <{A}>'),
     Shows((("From", A),), (("From", CEO),))),
    ("a zero-width space in the display name", f(f'"ceo@exa\u200bmple.org" <{A}>'),
     Shows((("From", A),), (("From", CEO),))),
    ("a right-to-left override in the display name is still an address",
     f(f'"\u202egro.elpmaxe@oec" <{A}>'),
     Shows((("From", A),), (("From", "gro.elpmaxe@oec"),))),
    ("a Cyrillic a in the local part is another mailbox", f("\u0430lice@example.org"),
     Shows((("From", "\u0430lice@example.org"),))),
    ("a Cyrillic a in the domain is another mailbox", f("alice@ex\u0430mple.org"),
     Shows((("From", "alice@xn--exmple-4nf.org"),))),
    ("a fullwidth at sign is not a mailbox", f("alice\uff20example.org"),
     Invalid("not a mailbox")),
    # -- Sender: and Resent- headers -----------------------------------------------------------
    ("a display address in Sender is reported as Sender",
     [("From", A), ("Sender", f'"{CEO}" <{A}>')],
     Shows((("From", A), ("Sender", A)), (("Sender", CEO),))),
    ("a redirect keeps the original From and adds the resender",
     [("Resent-From", f"Alice <{A}>"), ("Resent-To", "x@example.net"), ("From", CEO)],
     Shows((("From", CEO), ("Resent-From", A)))),
    ("every resent block is checked, not only the newest",
     [("Resent-From", A), ("Resent-Sender", A), ("Resent-From", CEO), ("From", A)],
     Shows((("From", A), ("Resent-From", A), ("Resent-Sender", A), ("Resent-From", CEO)))),
    ("a Resent-Sender with two mailboxes is refused",
     [("From", A), ("Resent-From", A), ("Resent-Sender", f"{A}, {CEO}")],
     Invalid("Resent-Sender: must be a single mailbox")),
    ("a Resent-Sender without a Resent-From is refused",
     [("From", A), ("Resent-Sender", CEO)], Invalid("Resent-Sender")),
    ("an invalid Resent-From makes the message invalid",
     [("From", A), ("Resent-From", f"{A})<{CEO}>")], Invalid("Resent-From: ")),
    ("a display address in Resent-From is reported as Resent-From",
     [("From", A), ("Resent-From", f"{A} ({CEO})")],
     Shows((("From", A), ("Resent-From", A)), (("Resent-From", CEO),))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "expected"), [pytest.param(h, e, id=name) for name, h, e in ROWS]
)
def test_each_spoofing_case_shows_what_a_client_shows_or_is_refused(
    headers: list[tuple[str, str]], expected: Shows | Invalid
) -> None:
    c = author_mailboxes(headers)
    if isinstance(expected, Invalid):
        assert c.mailboxes is None, c
        assert expected.why in c.problem
        assert c.problem
        assert c.sources == () and c.display_addresses == ()
        return
    assert c.problem == ""
    assert c.sources == expected.sources
    assert c.display_addresses == expected.display
    assert c.mailboxes == tuple(dict.fromkeys(box for _, box in expected.sources))


def test_the_table_names_are_unique_and_cover_both_outcomes() -> None:
    names = [name for name, _, _ in ROWS]
    assert len(names) == len(set(names))
    assert any(isinstance(e, Invalid) for _, _, e in ROWS)
    assert sum(1 for _, _, e in ROWS if isinstance(e, Shows) and e.display) >= 20
