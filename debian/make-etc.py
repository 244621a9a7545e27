#!/usr/bin/python3
"""Write /etc/policyd as the package installs it: safe until the admin edits it.

    make-etc.py CONF_DIR OUT_DIR

policyd.toml is the documented conf/policyd.toml (every key with its default) with its header
note about the example data replaced; ranges.txt and senders.txt keep their format comments
and lose every entry: no allocated range, no login, so nothing relays (config-check says
"0 ranges" and "0 logins"). The examples go to /usr/share/doc/policyd/examples/.
"""

import sys
from pathlib import Path

NOTE = """\
# As installed by the Debian package: ranges.txt and senders.txt next to this file have no
# entries, so nobody may relay until you add allocated ranges or logins there (or switch
# [directory] backend to "ldap"). Check with: policyd config-check -c /etc/policyd/policyd.toml
# Then: systemctl reload policyd. Examples: /usr/share/doc/policyd/examples/.
"""


def without_entries(text: str) -> str:
    """Only the comment and blank lines: every entry (text before a '#') is dropped."""
    kept = [ln for ln in text.splitlines() if not ln.split("#", 1)[0].strip()]
    return "\n".join(kept).rstrip() + "\n"


def main(conf: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    toml = (conf / "policyd.toml").read_text()
    head, sep, rest = toml.partition("\n\n")  # the header comment is the first paragraph
    lines = head.splitlines()
    # drop the paragraph about running the example data with no --config
    if "# This file is also what" in head:
        cut = next(i for i, ln in enumerate(lines) if ln.startswith("# This file is also what"))
        while cut > 0 and lines[cut - 1].strip() == "#":
            cut -= 1
        lines = lines[:cut]
    (out / "policyd.toml").write_text("\n".join(lines) + "\n#\n" + NOTE.rstrip("\n") + sep + rest)
    for name in ("ranges.txt", "senders.txt"):
        (out / name).write_text(without_entries((conf / name).read_text()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
