#!/usr/bin/env python3
"""A small asyncio SMTP load client for the e2e section (issue 29).

    smtpload.py --port P --messages N --conns C [--login alice] --sender S --rcpt R --from F

C sessions in parallel, one message per session (as smtp-source does by default): connect,
EHLO, [XCLIENT LOGIN=..., EHLO], MAIL, RCPT, DATA, the message, QUIT. The latency of a message
is from connect to the 250 after the message's end. Prints one JSON line: messages, errors,
seconds, msgs_per_s, p50_ms, p99_ms (the first error's reply in `first_error`).

Loopback only: the port is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def reply(r: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = (await r.readline()).decode("ascii", "replace")
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line.rstrip())
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), "\n".join(lines)


async def one(args: argparse.Namespace, body: bytes) -> float:
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", args.port)
    try:

        async def cmd(line: str, want: int) -> None:
            w.write(line.encode() + b"\r\n")
            code, text = await reply(r)
            if code != want:
                raise RuntimeError(f"{line.split(' ', 1)[0]}: {text}")

        code, text = await reply(r)
        if code != 220:
            raise RuntimeError(f"banner: {text}")
        await cmd("EHLO load.test", 250)
        if args.login:
            await cmd(f"XCLIENT LOGIN={args.login}", 220)
            await cmd("EHLO load.test", 250)
        await cmd(f"MAIL FROM:<{args.sender}>", 250)
        await cmd(f"RCPT TO:<{args.rcpt}>", 250)
        await cmd("DATA", 354)
        w.write(body)
        code, text = await reply(r)
        if code != 250:
            raise RuntimeError(f"end of data: {text}")
        elapsed = time.perf_counter() - t0
        w.write(b"QUIT\r\n")
        await w.drain()
        return elapsed
    finally:
        w.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = (
        f"From: {args.from_}\r\nTo: {args.rcpt}\r\nSubject: load\r\n"
        f"Message-ID: <load@load.test>\r\n\r\n" + "x" * 60 + "\r\n"
    ) * 1
    data = (body + ".\r\n").encode()
    latencies: list[float] = []
    errors: list[str] = []
    todo = iter(range(args.messages))

    async def worker() -> None:
        for _ in todo:
            try:
                latencies.append(await asyncio.wait_for(one(args, data), 30))
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(str(e) or type(e).__name__)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.conns)))
    seconds = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "messages": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": seconds,
        "msgs_per_s": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--login", default="")
    p.add_argument("--sender", required=True)
    p.add_argument("--rcpt", required=True)
    p.add_argument("--from", dest="from_", required=True)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
