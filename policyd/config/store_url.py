"""The shared quota store's URL ([quotas] store): where and how to connect, read once.

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]
    rediss://...same...[?ssl_ca_certs=CA.pem][&ssl_certfile=CERT.pem&ssl_keyfile=KEY.pem]
    unix://[[USER]:PASSWORD@]/PATH/TO/SOCKET[?db=DB]

rediss:// is TLS with the server's certificate verified and its name checked: against the
system's CAs, or only against `ssl_ca_certs` (a private CA); `ssl_certfile` / `ssl_keyfile` are
a client certificate for a server with `tls-auth-clients yes`. The parameters have redis-py's
names, so the one URL serves both connections (redis-py's for the admin commands, resp.py's for
the scripts). Anything else in the query is an error: a mistyped parameter must not silently
leave TLS unverified or the wrong database in use.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True)
class StoreTarget:
    host: str = ""
    port: int = 6379
    #: a Unix socket's path ("" for TCP)
    path: str = ""
    db: int = 0
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a rediss:// URL (None otherwise): certificate and name verified."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file or None)
        return ctx


def parse_store_url(url: str) -> StoreTarget:
    """The target of a store URL; ValueError saying what is wrong with it."""
    u = urlsplit(url)
    if u.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unknown scheme {u.scheme!r}: redis://, rediss:// or unix://")
    try:
        query = parse_qs(u.query, keep_blank_values=True, strict_parsing=bool(u.query))
    except ValueError:
        raise ValueError(f"not a URL query: {u.query!r}") from None
    for name, values in query.items():
        if name != "db" and name not in _TLS_FILES:
            raise ValueError(f"unknown URL parameter {name!r} (db, {', '.join(_TLS_FILES)})")
        if len(values) != 1 or not values[0]:
            raise ValueError(f"URL parameter {name!r} must be given once, with a value")
    files = {name: query[name][0] for name in _TLS_FILES if name in query}
    if files and u.scheme != "rediss":
        raise ValueError(f"{', '.join(files)}: only with rediss:// (TLS)")
    if "ssl_keyfile" in files and "ssl_certfile" not in files:
        raise ValueError("ssl_keyfile without ssl_certfile")
    for name, file in files.items():
        if not Path(file).is_absolute():
            raise ValueError(f"{name}: an absolute path, not {file!r}")
        if not Path(file).is_file():
            raise ValueError(f"{name}: no such file: {file}")
    try:
        port = u.port
    except ValueError:
        raise ValueError(f"not a port: {u.netloc.rsplit(':', 1)[-1]!r}") from None
    db_text = query.get("db", [""])[0]
    if u.scheme == "unix":
        if u.hostname or not u.path.startswith("/"):
            raise ValueError("unix:// needs the socket's absolute path: unix:///run/x.sock")
    else:
        if not u.hostname:
            raise ValueError("no host: redis://HOST[:PORT][/DB]")
        path_db = u.path.strip("/")
        if path_db and db_text:
            raise ValueError("the database given twice (path and ?db=)")
        db_text = db_text or path_db
    db_text = db_text or "0"
    if not (db_text.isascii() and db_text.isdigit() and len(db_text) <= 5):
        raise ValueError(f"the database must be a number, not {db_text!r}")
    return StoreTarget(
        host="" if u.scheme == "unix" else (u.hostname or ""),
        port=port or 6379,
        path=unquote(u.path) if u.scheme == "unix" else "",
        db=int(db_text),
        username=unquote(u.username or ""),
        password=unquote(u.password or ""),
        tls=u.scheme == "rediss",
        ca_file=files.get("ssl_ca_certs", ""),
        cert_file=files.get("ssl_certfile", ""),
        key_file=files.get("ssl_keyfile", ""),
    )
