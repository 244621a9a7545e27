"""What all the milter's connections share (MilterService): the runtime, the profile, and the
event loop in a daemon thread that owns the directory cache. No pymilter here: libmilter.py,
the adapter, calls it from libmilter's threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from policyd.addresses import canonical_login
from policyd.config import Config, ProfileConfig
from policyd.core.decision import Decision
from policyd.core.engine import decide_header_from
from policyd.directory.base import DirectoryUnavailable
from policyd.milter.decide import decide_headers, decide_headers_now
from policyd.milter.headers import AuthorCheck
from policyd.quotas.backend import create_store
from policyd.quotas.current import milter_rejected
from policyd.quotas.store import QuotaStore
from policyd.runtime import Runtime, build_runtime

log = logging.getLogger("policyd.milter")

T = TypeVar("T")

#: The signals libmilter handles (all three stop it).
LIBMILTER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class MilterService:
    """What all connections share: the runtime, the profile, and the lookup event loop."""

    def __init__(self, runtime: Runtime, profile: ProfileConfig) -> None:
        self.runtime = runtime
        self.profile = profile
        self.deadline = runtime.config.directory.lookup_deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: [quotas] with a shared store: a message refused here is not counted (issue 28)
        self.quota_store: QuotaStore | None = None
        q = runtime.config.quotas
        if q.enabled and q.store != "none":
            self.quota_store = create_store(q)

    @classmethod
    def from_config(cls, config: Config, runtime: Runtime | None = None) -> MilterService:
        """The milter's profile is milter.profile, or policy.default_profile when that is ""."""
        return cls(runtime or build_runtime(config), config.milter_profile())

    # -- the event loop thread that owns the cache ------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            # libmilter stops on SIGTERM/SIGINT/SIGHUP by sigwait() in its own thread, which
            # only works when every thread blocks them: otherwise the kernel may deliver
            # SIGTERM here and its default action kills the process at once, mid-transaction.
            # The lookup pool's threads are started from this thread and inherit the mask.
            signal.pthread_sigmask(signal.SIG_BLOCK, LIBMILTER_SIGNALS)
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="policyd-milter-lookups", daemon=True)
        self._thread.start()
        ready.wait(5)

    def close(self) -> None:
        if self.quota_store is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._submit(self.quota_store.close())
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
        self.runtime.close()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the lookup loop; a timeout counts as the directory being down."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("MilterService.start() was not called")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(timeout=self.deadline + 1)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise DirectoryUnavailable(f"no answer within {self.deadline + 1:g}s") from None

    # -- lookups (called from libmilter threads) ---------------------------------------------

    def quota_rejected(self, login: str, queue_id: str) -> None:
        """A message of `login` (as Postfix sent it) is refused here: not counted."""
        if self.quota_store is None or not queue_id or not login.strip():
            return
        who = canonical_login(login.strip(), self.runtime.rules)
        try:
            self._submit(milter_rejected(self.quota_store, who, queue_id))
        except DirectoryUnavailable as e:  # (the loop did not answer in time)
            log.warning("quota store: %s; the refused message stays counted", str(e))

    # -- the decision ------------------------------------------------------------------------

    def decide(self, login: str, author: AuthorCheck, client: str, sender: str) -> Decision:
        """decide.decide_headers: in the calling thread when every fact is known at once
        (decide_headers_now), else on the lookup loop. `login` as Postfix sent it."""
        rt = self.runtime
        now = decide_headers_now(rt, self.profile, login, author, client=client, sender=sender)
        if now is not None:
            return now
        try:
            return self._submit(
                decide_headers(rt, self.profile, login, author, client=client, sender=sender)
            )
        except DirectoryUnavailable as e:  # (the lookup loop itself did not answer in time)
            log.warning("directory unavailable: %s", str(e))  # (str: see policy/service.py)
            return decide_header_from(
                login.strip(),
                author.mailboxes,
                self.profile,
                None,
                rt.rules,
                client=client,
                sender=sender,
                directory_unavailable=True,
            )
