"""A loopback SMTP sink (aiosmtpd) that keeps every message it is given.

with SmtpSink() as sink:                 # 127.0.0.1, a free port (or port=...)
    sink.port; sink.wait_for(1); sink.messages[0].rcpt_tos / .mail_from / .content
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.servers.requirements import in_ci


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.sink.lock:
            self.sink.messages.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 2.0.0 kept by the test sink"


class SmtpSink:
    def __init__(self, port: int | None = None) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:  # pragma: no cover - the dev extra has it
            msg = "the loopback SMTP sink needs aiosmtpd (pip install 'policyd[dev]')"
            if in_ci():
                pytest.fail(msg + " [CI=true]")
            pytest.skip(msg)
        from tests.servers.postfix import free_port

        self.port = port or free_port()
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"the sink got {len(self.messages)} of {count} messages")
            time.sleep(0.02)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
