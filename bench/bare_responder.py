#!/usr/bin/env python3
"""The baseline for bench/run.py: a policy "server" that does nothing but the I/O.

It reads until a whole request has arrived (the empty line that ends it) and answers
``action=DUNNO\\n\\n``, on an asyncio Protocol like policyd's server, with TCP_NODELAY like
policyd. Same event loop choice as ``policyd serve``: uvloop when importable, plain asyncio
with ``--no-uvloop`` or ``POLICYD_NO_UVLOOP=1``. The loop used is printed on stderr at start:
``bare_responder: listening on 127.0.0.1:PORT (loop uvloop)``.

With ``--parse`` it also reads every request into a dict of its attributes, the fastest way
pure Python has (one decode, one replace, one split, ``dict(zip(it, it))``; no validation),
and reads the attributes a policy decision looks at, before answering ``DUNNO``: the least
any Python policy daemon must do per request. bench/run.py measures it as the ceiling for
policyd's ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

REPLY = b"action=DUNNO\n\n"


class Bare(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2 :]
        assert self.transport is not None
        self.transport.write(REPLY * self.requests(buf, end))

    def requests(self, buf: bytes, end: int) -> int:
        """How many requests buf[:end + 2] holds (each ends with an empty line)."""
        return buf.count(b"\n\n", 0, end + 2)


class ParseOnly(Bare):
    __slots__ = ()

    def requests(self, buf: bytes, end: int) -> int:
        n = 0
        for block in buf[:end].split(b"\n\n"):
            it = iter(block.decode("utf-8", "surrogateescape").replace("\n", "=").split("="))
            g = dict(zip(it, it, strict=False)).get
            SEEN.append(
                (
                    g("request"),
                    g("protocol_state"),
                    g("client_address"),
                    g("sasl_username"),
                    g("sender"),
                    g("recipient"),
                    g("queue_id"),
                    g("instance"),
                    g("server_port"),
                )
            )
            SEEN.pop()
            n += 1
        return n


SEEN: list[tuple[str | None, ...]] = []


async def serve(host: str, port: int, parse: bool = False) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ParseOnly if parse else Bare, host, port, reuse_address=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    kind = type(loop).__module__.split(".")[0]
    print(f"bare_responder: listening on {host}:{port} (loop {kind})", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


def main() -> int:
    p = argparse.ArgumentParser(description="answer action=DUNNO to every policy request")
    p.add_argument("--listen", default="127.0.0.1:10049", metavar="HOST:PORT")
    p.add_argument(
        "--no-uvloop", action="store_true", help="plain asyncio (also POLICYD_NO_UVLOOP=1)"
    )
    p.add_argument(
        "--parse", action="store_true", help="also read each request into a dict (the ceiling)"
    )
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    coro = serve(host.strip("[]"), int(port), a.parse)
    if a.no_uvloop or os.environ.get("POLICYD_NO_UVLOOP"):
        asyncio.run(coro)
        return 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
