"""Listener specs, as server.listen, --listen and metrics.listen take them."""

from __future__ import annotations

import re

_LISTEN_RE = re.compile(r"^(?:unix:(/.+)|\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+))$")


def parse_listen(spec: str) -> tuple[str, str | None, int | None]:
    """ "unix:/p" -> ("unix", "/p", None); "h:p" / "[v6]:p" -> ("tcp", host, port).
    Raises ValueError with a reason."""
    m = _LISTEN_RE.match(spec.strip())
    if not m:
        raise ValueError(f"{spec!r} is not HOST:PORT, [IPV6]:PORT or unix:/ABSOLUTE/PATH")
    if m.group(1):
        return ("unix", m.group(1), None)
    host = m.group(2) or m.group(4)
    port = int(m.group(3) or m.group(5))
    if not 0 <= port <= 65535:
        raise ValueError(f"{spec!r}: port must be 0..65535")
    return ("tcp", host, port)
