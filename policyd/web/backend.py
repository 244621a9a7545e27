"""Everything blocking the web page calls, run in a thread pool with a deadline.

The Verification API (policyd/verification/), the directory's own addresses of a login, the
session store and the LDAP login bind are all synchronous; a call that has not answered within
`web.call_deadline` seconds gives the person "try again later" (HTTP 503) and the event loop
never waits on it. (A thread that overran finishes in the background; its result is dropped.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")


class Overloaded(Exception):
    """A blocking call missed its deadline."""


class Blocking:
    """A thread pool and a deadline for blocking calls."""

    def __init__(self, threads: int, deadline: float) -> None:
        self.deadline = deadline
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="policyd-web")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(fut, self.deadline)
        except TimeoutError:
            log.warning(
                "web: %s did not answer within %.1f s",
                getattr(fn, "__qualname__", "a call"),
                self.deadline,
            )
            raise Overloaded from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
