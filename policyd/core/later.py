"""A decision that waits for one future only (the quota store's answer to a pipelined script
call): the connection answers it from a done-callback on that very future (policy/
connection.py), with no Task, no coroutine and no second future per request, and so no loop
iteration between the store's answer and the reply. Anything else awaits it as usual.

Not compiled (policyd/build.py): it is awaitable through `__await__`, and it is one object
per waiting message, not code a request runs through."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Later(Generic[T]):
    __slots__ = ("fut", "then")

    def __init__(self, fut: Any, then: Callable[[Any], T]) -> None:
        #: an asyncio.Future: the answer waited for
        self.fut = fut
        #: the value, from that future once it is done (it reads the result or the
        #: exception itself, as its caller decides: a store error becomes the guard's
        #: fallback or a deferral, never a permit)
        self.then = then

    async def wait(self) -> T:
        with contextlib.suppress(Exception):  # (`then` reads the exception and decides)
            await self.fut
        return self.then(self.fut)

    def __await__(self) -> Generator[Any, None, T]:
        return self.wait().__await__()
