"""The address-form table of issue 24: the classes of sender forms where Postfix's own
`reject_sender_login_mismatch` once disagreed with policyd, each with rows in both directions
(a login sending, and a client without login on the MX: `protect_local_senders`).

One directory (SENDERS, in senders.txt form; `login_map()` gives the same as a Postfix
`smtpd_sender_login_maps` table) and one set of Postfix-mirroring settings (ADDRESSES, the
policyd `[addresses]` table; POSTFIX_MAIN_CF, the same for Postfix). The rows are run by
tests/unit/test_address_forms.py through PolicyService and by
tests/system/test_postfix_address_forms.py through a real Postfix in front of policyd, and
through a real Postfix that decides with its own restriction (the judge).

A row's `policyd` is policyd's answer; `postfix` is Postfix's own, the same unless the row is
one of the README's deliberate exceptions (`why` says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Answer = Literal["accept", "reject"]

SENDERS = """\
# tests/address_forms.py: one directory for policyd and for Postfix's smtpd_sender_login_maps
alice:   alice@example.org
bob:     bob@other.example
mailer:  mailer@lists.example
owner:   owner@lists.example
list:    list@lists.example
double:  double@lists.example
dom:     @lists.example
lead:    +lead@example.org, +lead@lists.example
strasse: strasse@example.org
idn:     x@bücher.example
fuss:    x@fussball.example
"""

#: Every login of SENDERS (the SASL users of the test Postfix).
LOGINS: tuple[str, ...] = ("alice", "bob", "mailer", "owner", "list", "double", "dom", "lead")
LOGINS += ("strasse", "idn", "fuss")

#: policyd's [addresses] table, mirroring POSTFIX_MAIN_CF.
ADDRESSES = {
    "extension_delimiters": "+-",
    "smtputf8_enable": True,
    "swap_bangpath": True,
    "allow_percent_hack": True,
    "owner_request_special": True,
    "mydestination": ["example.org"],
}

#: The same settings for Postfix (all but mydestination are Postfix's defaults at
#: compatibility_level 3.6).
POSTFIX_MAIN_CF = {
    "recipient_delimiter": "+-",
    "smtputf8_enable": "yes",
    "swap_bangpath": "yes",
    "allow_percent_hack": "yes",
    "owner_request_special": "yes",
    "mydestination": "example.org",
}

#: Domains mail may be sent to on the MX (relay_domains of the test Postfix; example.org is in
#: mydestination there).
RELAY_DOMAINS = ("example.net", "other.example", "lists.example", "carol.example")
MX_RECIPIENT = "rcpt@example.net"


@dataclass(frozen=True)
class Row:
    cls: str
    login: str | None  # None: no AUTH, on the MX (protect_local_senders)
    sender: str  # as the client writes it in MAIL FROM:<...>, without the brackets
    policyd: Answer
    postfix: Answer | None = None  # None: the same as policyd
    why: str = ""

    @property
    def judge(self) -> Answer:
        return self.postfix or self.policyd

    @property
    def smtputf8(self) -> bool:
        return not self.sender.isascii()

    @property
    def id(self) -> str:
        who = self.login or "noauth"
        return f"{self.cls}-{who}-{self.sender}"


ROWS: list[Row] = [
    # 1. domain!user and user%domain without "@": checked as user@domain
    Row("1-bang", None, "example.org!alice", "reject"),
    Row("1-percent", None, "alice%example.org", "reject"),
    Row("1-percent", "alice", "alice%example.org", "accept"),
    Row("1-bang", "alice", "example.org!alice", "accept"),
    Row("1-bang", "bob", "example.org!alice", "reject"),
    Row("1-percent", "bob", "alice%example.org", "reject"),
    # 2. local parts Postfix never splits ("-" is a delimiter here)
    Row("2-special", "mailer", "mailer-daemon@lists.example", "reject"),
    Row("2-special", "dom", "mailer-daemon@lists.example", "accept"),
    Row("2-special", "double", "double-bounce@lists.example", "reject"),
    Row("2-special", "dom", "double-bounce@lists.example", "accept"),
    Row("2-owner", "owner", "owner-list@lists.example", "reject"),
    Row("2-owner", "dom", "owner-list@lists.example", "accept"),
    Row("2-owner", "owner", "owner-list+news@lists.example", "reject"),
    Row("2-request", "list", "list-request@lists.example", "reject"),
    Row("2-request", "dom", "list-request@lists.example", "accept"),
    Row("2-split", "list", "list-news@lists.example", "accept"),
    Row("2-special", None, "mailer-daemon@lists.example", "reject"),
    # 3. a local part that starts with a delimiter is not split
    Row("3-lead", "lead", "+lead+x@example.org", "reject"),
    Row("3-lead", "dom", "+lead+x@lists.example", "accept"),
    Row("3-lead", "lead", "+lead@example.org", "accept"),
    Row("3-lead", None, "+lead+x@example.org", "accept"),
    # 4. non-ASCII local parts fold in full with smtputf8_enable
    Row("4-fold", "strasse", "Straße@example.org", "accept"),
    Row("4-fold", "alice", "STRAßE@example.org", "reject"),
    Row("4-fold", None, "straße@example.org", "reject"),
    # 5. IDN: U-label and A-label are one domain here (Postfix compares them as written); and
    # IDNA 2008 keeps "ß" apart from "ss" in a domain (Postfix's casefold merges them)
    Row("5-idn", "idn", "x@bücher.example", "accept"),
    Row(
        "5-idn",
        "idn",
        "x@xn--bcher-kva.example",
        "accept",
        "reject",
        "deliberate: one domain, one owner (U-label = A-label)",
    ),
    Row(
        "5-idn",
        "fuss",
        "x@fußball.example",
        "reject",
        "accept",
        "deliberate: IDNA 2008, fußball.example is another registered domain",
    ),
    Row(
        "5-idn",
        None,
        "x@fußball.example",
        "accept",
        "reject",
        "deliberate: IDNA 2008, fußball.example is not the owned fussball.example",
    ),
    Row("5-idn", None, "x@xn--bcher-kva.example", "reject", "accept", "deliberate: U = A"),
    # 6. routing forms inside a $mydestination domain (addresses.mydestination)
    Row("6-route", "bob", "bob%other.example@example.org", "accept"),
    Row("6-route", "alice", "bob%other.example@example.org", "reject"),
    Row("6-route", None, "bob%other.example@example.org", "reject"),
    Row("6-route", None, "alice%example.org@example.org", "reject"),
    Row("6-route", "alice", "other.example!bob@example.org", "reject"),
    # smtpd's own forms: a source route and a quoted local part
    Row("route", None, "@relay.example:alice@example.org", "reject"),
    Row("route", "alice", "@relay.example:alice@example.org", "accept"),
    Row("quoted", None, '"alice"@example.org', "reject"),
    Row("quoted", None, '"alice%example.org"', "reject"),
    Row("quoted", "alice", '"alice%example.org"', "accept"),
]


def login_map() -> str:
    """SENDERS as a Postfix lookup table (texthash: "address login,login"), keys case-folded
    the way Postfix folds lookup keys with smtputf8_enable (texthash folds ASCII only when it
    loads the file)."""
    owners: dict[str, list[str]] = {}
    for line in SENDERS.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, tail = line.partition(":")
        for addr in tail.replace(",", " ").split():
            owners.setdefault(addr.casefold(), []).extend(head.replace(",", " ").split())
    return "".join(f"{k} {','.join(v)}\n" for k, v in owners.items())
