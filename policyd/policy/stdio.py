"""`policyd serve --stdio`: one connection on stdin/stdout (Postfix spawn(8)), answered by the
same App, service and reply path as the daemon."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time

from policyd.policy.actions import INTERNAL_ERROR, encode_decision
from policyd.policy.app import App
from policyd.policy.protocol import ProtocolError, RequestParser

log = logging.getLogger("policyd.stdio")  # (not __name__: the name admins grep)


async def serve_stdio(app: App, rfd: int = 0, wfd: int = 1) -> None:
    """Load, then answer the requests on one connection until EOF.

    A socket (what spawn(8) passes) is served by the same connection code as the daemon;
    anything else (a pipe, a terminal, a file) by a plain blocking read loop over the same
    parser, service and reply path. Every reply is written with os.write, so nothing sits in a
    buffer. The caller keeps logs away from stdout/stderr: under spawn(8) both are the
    Postfix socket.
    """
    app.load()
    try:
        if stat.S_ISSOCK(os.fstat(rfd).st_mode):
            await _stdio_socket(app, rfd)
        else:
            await _stdio_stream(app, rfd, wfd)
    finally:
        app.close()


async def _stdio_socket(app: App, fd: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=os.dup(fd))
    await loop.connect_accepted_socket(app.server.new_connection, sock)
    while app.server.connections:  # the one connection; it leaves the set on close
        await asyncio.sleep(0.02)


async def _stdio_stream(app: App, rfd: int, wfd: int) -> None:
    parser = RequestParser()
    service = app.service
    assert service is not None
    while True:
        data = os.read(rfd, 65536)  # blocking on purpose: one client, strictly serial
        if not data:
            if parser.pending:
                log.info("stdin closed in the middle of a request")
            return
        try:
            requests = parser.feed_requests(data)
        except ProtocolError as e:
            log.warning("closing stdin connection: %s (nothing answered)", e)
            return
        for req in requests:
            started = time.perf_counter()
            try:
                profile, decision = await service.decide(req)
                pname = profile.name
            except Exception:  # a bug must defer, never permit, never kill the server
                log.exception("internal error deciding a request on stdin")
                pname, decision = "-", INTERNAL_ERROR
            _write_all(wfd, encode_decision(decision))
            app.server.emit(req, pname, decision, time.perf_counter() - started)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
