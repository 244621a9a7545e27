"""A profile: how the decision treats a request (role, mode, the state to check, the replies).
Its fields are the [profiles.NAME] table's keys (policyd.config reads them from the TOML file
and checks them; conf/policyd.toml documents them). The decision code takes it from here, so
the pure core needs nothing of the config.

Not compiled (policyd/build.py): the config reads these dataclasses' field types at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class RepliesConfig:
    null_sender: str = "553 5.7.1 The null sender is not allowed for authenticated users"
    directory_unavailable: str = "451 4.3.0 Temporary lookup failure, please try again later"
    sender_not_owned: str = "553 5.7.1 Sender address <{sender}> is not owned by user {login}"
    sender_not_allowed_from_network: str = (
        "553 5.7.1 Sender address <{sender}> is not allowed from network {range}"
    )
    authentication_required: str = (
        "554 5.7.1 Relay access denied: {client} is not in our network; "
        "enable SMTP authentication in your mail client"
    )
    sender_requires_login: str = "553 5.7.1 Sender address <{sender}> requires SMTP authentication"
    header_from_not_owned: str = (
        "550 5.7.1 Header {header} <{address}> is not owned by user {login}"
    )
    header_from_display_address: str = (
        "550 5.7.1 Header {header} shows <{address}> in a display name or comment; "
        "it is not owned by user {login}"
    )
    header_from_invalid: str = "550 5.7.1 Message has no valid From: header"


@dataclass(frozen=True)
class ProfileConfig:
    name: str = ""
    #: submission: untrusted clients are told to authenticate (554). mx: untrusted clients get
    #: DUNNO so Postfix's own rules (reject_unauth_destination) decide.
    role: Literal["submission", "mx"] = "submission"
    #: warn: log what would be rejected or deferred, answer DUNNO.
    mode: Literal["enforce", "warn"] = "enforce"
    check_state: Literal["CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE"] = (
        "RCPT"
    )
    #: server_port values that select this profile when no policy_context is sent.
    ports: tuple[int, ...] = ()
    accept_action: str = "OK"
    null_sender: Literal["dunno", "reject"] = "dunno"
    protect_local_senders: bool = False
    #: milter: an address in a From:/Sender: display name or comment that the login does not
    #: own is refused ("refuse"), or only the real mailboxes are checked ("allow").
    display_addresses: Literal["refuse", "allow"] = "refuse"
    replies: RepliesConfig = field(default_factory=RepliesConfig)
