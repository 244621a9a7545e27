"""Shared by the sender-verification tests: a Verification over a real SQLite file."""

from __future__ import annotations

import dataclasses
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from policyd.addresses import AddressRules
from policyd.config import Config
from policyd.config.verification import VerificationConfig, VerificationLimitsConfig
from policyd.directory.base import Directory
from policyd.directory.static import StaticDirectory
from policyd.verification.build import primary_of
from policyd.verification.service import Verification
from policyd.verification.store import Store

DIRECTORY = """\
alice: alice@example.org
bob:   bob@example.org
carol: @carol.example
"""

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Outbox:
    """A Mailer that keeps what it is given (unit tests: the message itself is the subject)."""

    def __init__(self) -> None:
        self.sent: list[tuple[EmailMessage, str, str]] = []

    def send(self, msg: EmailMessage, envelope_from: str, to: str) -> None:
        self.sent.append((msg, envelope_from, to))

    @property
    def last(self) -> EmailMessage:
        return self.sent[-1][0]


def code_of(msg: EmailMessage | bytes | str) -> str:
    text = _text(msg)
    m = re.search(r"^\s+(\d{8})\s*$", text, re.MULTILINE)
    assert m, text
    return m.group(1)


def token_of(msg: EmailMessage | bytes | str) -> str:
    m = re.search(r"[?&]token=([A-Za-z0-9_-]{43})", _text(msg))
    assert m
    return m.group(1)


def _text(msg: EmailMessage | bytes | str) -> str:
    if isinstance(msg, EmailMessage):
        return str(msg.get_content())
    if isinstance(msg, bytes):
        return msg.decode("utf-8", "replace")
    return msg


def make_config(tmp_path: Path, **changes: Any) -> Config:
    limits = changes.pop("limits", {})
    vc = VerificationConfig(
        **{
            "enabled": True,
            "database": tmp_path / "senders.sqlite",
            "local_domains": ("example.org", "carol.example"),
            "limits": VerificationLimitsConfig(**{"mail_interval_per_address": 0.0, **limits}),
            **changes,
        }
    )
    return dataclasses.replace(Config(), verification=vc)


def make_api(
    tmp_path: Path,
    *,
    clock: Clock | None = None,
    mailer: Any = None,
    directory: str | Directory = DIRECTORY,
    store: Store | None = None,
    writer: Any = None,
    **changes: Any,
) -> tuple[Verification, Any, Clock]:
    config = make_config(tmp_path, **changes)
    rules = AddressRules()
    d = (
        StaticDirectory.from_lines(directory.splitlines(), rules)
        if isinstance(directory, str)
        else directory
    )
    clock = clock or Clock()
    mailer = mailer if mailer is not None else Outbox()
    api = Verification(
        config,
        store or Store(config.verification.database, config.verification.busy_timeout),
        mailer,
        d.addresses_of,
        primary_of(d, rules),
        clock,
        local_domains=frozenset(config.verification.local_domains),
        writer=writer,
        directory=d,
    )
    return api, mailer, clock
