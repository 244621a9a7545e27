"""`policyd milter`: the header From: check (a logged-in user may only write addresses they own).

headers + header_display (From:/Sender:/Resent-* -> mailboxes, read three ways), decide
(author headers -> lookups -> Decision), libmilter (the pymilter adapter and `run_milter`).
Importing this package imports no pymilter: only libmilter does, and `policyd milter` turns
its ImportError into an install hint.
"""

from __future__ import annotations


def listen_warning(listen: str) -> str | None:
    """The warning for a TCP milter socket (`policyd config-check` prints it, `policyd milter`
    logs it at start), or None. libmilter does not set TCP_NODELAY on the connections it
    accepts and pymilter gives no access to their sockets, so over TCP every answer can wait
    for the MTA's delayed ACK (~40 ms): measured, 8 Postfix sessions top out near 180
    messages/s (issue 29)."""
    if not listen.startswith(("inet:", "inet6:")):
        return None
    return (
        f"WARNING: milter.listen {listen} is TCP: libmilter sets no TCP_NODELAY on the "
        "connections it accepts (pymilter cannot), so each message can stall ~40 ms and "
        "Postfix's throughput drops to a fraction; use a unix socket, e.g. "
        'listen = "unix:/var/spool/postfix/policyd/milter.sock"'
    )
