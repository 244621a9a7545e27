"""What the API hands out: small frozen values (no hashes, no secrets), and its errors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """Who did it: a login, "admin" or "cli"; and from which IP (None for the command line)."""

    who: str
    ip: str | None = None


CLI = Actor("cli")


class Refused(Exception):
    """A request that was not carried out. `code` is stable (for programs); `message` is a
    sentence for a person that never tells whether another login has or requested an address;
    `detail` (maybe "") is for an admin's eyes (the mail server's answer, the LDAP error)."""

    def __init__(self, code: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.detail = code, message, detail


@dataclass(frozen=True)
class PendingView:
    login: str
    address: str
    state: str
    created: float
    #: until when the code, and the link (and so the request), are valid
    code_expires: float | None
    link_expires: float | None
    mail_sent: float | None
    #: why the last mail could not be sent (None when it was)
    last_error: str | None
    #: the From: of the confirmation mail (tell the user to look for it, also in spam)
    mail_from: str


@dataclass(frozen=True)
class Lifecycle:
    """Who asked for which address and where the request stands: what the stored row
    (queries.Row) and the public view (EntryView) share."""

    login: str
    address: str
    state: str
    #: "code", "link" or "admin" once verified
    method: str | None
    created: float
    updated: float
    verified_at: float | None


@dataclass(frozen=True)
class EntryView(Lifecycle):
    code_expires: float | None
    link_expires: float | None
    last_error: str | None
    #: state "superseded" (a verified row that no longer counts): why, for an admin's eyes
    why: str | None = None


@dataclass(frozen=True)
class LandingView:
    """What a link would confirm (shown on the landing page before any button is pressed)."""

    address: str
    primary_address: str | None
    site_name: str
    link_expires: float


@dataclass(frozen=True)
class AuditView:
    at: float
    who: str
    ip: str | None
    login: str | None
    address: str | None
    event: str
    old_state: str | None
    new_state: str | None
    detail: str | None
