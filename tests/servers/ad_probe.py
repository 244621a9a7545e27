"""Run inside the AD DC's namespace (tests/servers/samba_ad.py): the LDAP directory's answers
as JSON, for tests/integration/test_ad.py.

    python -m tests.servers.ad_probe CONFIG '[["addresses_of", "alice"], ["owners_of", "x@y"]]'

prints one JSON list: per call, {"ok": sorted values} or {"error": "ClassName: message"}.
["references", LOGIN] is the raw answer to the user search for LOGIN on policyd's own
connection: {"ok": [the continuation references (referrals) the server sent]}.
"""

from __future__ import annotations

import json
import sys

from policyd.config import load_config
from policyd.directory.ldap import LdapDirectory, render_filter


def references(d: LdapDirectory, login: str) -> list[str]:
    c, _ = d._acquire()
    filt = render_filter(d.cfg.user_filter, login=login, localpart=login, domain="")
    _ok, _result, response, _ = c.conn.search(d.cfg.user_base, filt, attributes=["mail"])
    return sorted(
        str(u) for r in response or [] if r.get("type") == "searchResRef" for u in r["uri"]
    )


def main(argv: list[str]) -> int:
    config = load_config(argv[0])
    calls = json.loads(argv[1])
    d = LdapDirectory(config.ldap, config.addresses.rules())
    out: list[dict[str, object]] = []
    try:
        for name, arg in calls:
            try:
                if name == "references":
                    out.append({"ok": references(d, arg)})
                    continue
                got = d.addresses_of(arg) if name == "addresses_of" else d.owners_of(arg)
                out.append({"ok": sorted(got)})
            except Exception as e:  # noqa: BLE001 - reported to the test
                out.append({"error": f"{type(e).__name__}: {e}"})
    finally:
        d.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
