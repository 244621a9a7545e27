#!/usr/bin/python3
"""Policy-protocol clients run INSIDE the booted container (copied to /out), stdlib only.

    client.py ask ADDR [name=value ...]           one request, prints the action
    client.py busy ADDR SECONDS [name=value ...]  one connection, a request every 20 ms for
                                                  SECONDS; waits for /out/busy.stop if it exists
                                                  at start; prints JSON [[t, action], ...]
    client.py burst ADDR SECONDS THREADS          a new connection per request, THREADS at a
                                                  time, retrying once after a clean close before
                                                  the reply, as Postfix does; prints JSON
                                                  {"sent", "answered", "retried", "errors"}

ADDR is HOST:PORT or unix:PATH. Defaults: an unauthenticated RCPT request from 192.0.2.7.
"""

import json
import socket
import sys
import threading
import time
from typing import Any

BASE = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "protocol_name": "ESMTP",
    "client_address": "192.0.2.7",
    "client_name": "unknown",
    "sasl_username": "",
    "sender": "someone@example.com",
    "recipient": "rcpt@example.net",
    "policy_context": "submission",
}


def connect(addr: str) -> socket.socket:
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(addr[5:])
    else:
        host, _, port = addr.rpartition(":")
        s = socket.create_connection((host, int(port)), timeout=10)
    return s


def encode(extra: dict[str, str]) -> bytes:
    attrs = {**BASE, **extra}
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def ask_on(s: socket.socket, buf: bytearray, extra: dict[str, str]) -> str:
    s.sendall(encode(extra))
    while b"\n\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed by policyd")
        buf += data
    reply, _, rest = bytes(buf).partition(b"\n\n")
    buf[:] = rest
    return reply.decode().removeprefix("action=")


def parse(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args)


def main(argv: list[str]) -> int:
    cmd, addr = argv[1], argv[2]
    if cmd == "ask":
        with connect(addr) as s:
            print(ask_on(s, bytearray(), parse(argv[3:])))
        return 0
    if cmd == "busy":
        seconds, extra = float(argv[3]), parse(argv[4:])
        out: list[tuple[float, str]] = []
        with connect(addr) as s:
            buf = bytearray()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    out.append((time.time(), ask_on(s, buf, extra)))
                except OSError as e:
                    out.append((time.time(), f"ERROR {e}"))
                    break
                time.sleep(0.02)
        print(json.dumps(out))
        return 0
    if cmd == "burst":
        seconds, threads = float(argv[3]), int(argv[4])
        counts: dict[str, Any] = {"sent": 0, "answered": 0, "retried": 0, "errors": []}
        lock = threading.Lock()
        end = time.monotonic() + seconds

        def worker() -> None:
            while time.monotonic() < end:
                with lock:
                    counts["sent"] += 1
                for attempt in (1, 2):
                    try:
                        with connect(addr) as s:
                            action = ask_on(s, bytearray(), {})
                        with lock:
                            counts["answered"] += 1 if action else 0
                        break
                    except ConnectionError as e:
                        # A clean end of stream before the reply: a stopping policyd closed
                        # the connection between requests. Postfix's policy client then
                        # retries on a new connection, and so does this one (once).
                        if attempt == 1 and str(e) == "closed by policyd":
                            with lock:
                                counts["retried"] += 1
                            continue
                        with lock:
                            counts["errors"].append(repr(e))
                    except OSError as e:  # refused, reset, timeout: a lost request
                        with lock:
                            counts["errors"].append(repr(e))
                        break

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print(json.dumps(counts))
        return 0
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
