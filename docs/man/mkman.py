#!/usr/bin/env python3
"""policyd.toml(5) from the documented config file, so the man page lists every key:

    python3 docs/man/mkman.py conf/policyd.toml > policyd.toml.5

conf/policyd.toml documents each key in the comment lines above it, with its default as the
value. The first comment paragraph becomes the DESCRIPTION, each [table] a subsection (the
comments above it its introduction), each key an entry showing its default. The static parts
(NAME, FILES, SEE ALSO) are in docs/man/policyd.toml.5.in. Standard library only: it runs at
package build time.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_KEY = re.compile(r"^([A-Za-z0-9_]+)\s*=\s*(.*)$")
_TABLE = re.compile(r"^\[([A-Za-z0-9_.]+)\]\s*$")


def roff(text: str) -> str:
    """Escape text for roff: backslashes, leading dots/quotes, minus signs."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def _paragraph(comments: list[str]) -> list[str]:
    out: list[str] = []
    for c in comments:
        out.append(".PP" if not c.strip() else roff(c.strip()))
    while out and out[0] == ".PP":
        out.pop(0)
    return out


def entries(
    source: str,
) -> tuple[list[str], list[tuple[str, list[str], list[tuple[str, str, list[str]]]]]]:
    """(header comments, [(table, intro comments, [(key, default, comments)])])."""
    header: list[str] = []
    tables: list[tuple[str, list[str], list[tuple[str, str, list[str]]]]] = []
    pending: list[str] = []
    in_header = True
    lines = iter(source.splitlines())
    for raw in lines:
        line = raw.strip()
        if in_header:
            if line.startswith("#"):
                header.append(line[1:].lstrip() if line != "#" else "")
                continue
            in_header = False
        if line.startswith("#"):
            pending.append(line[1:].lstrip() if line != "#" else "")
        elif not line:
            if pending and tables:  # a comment paragraph between tables: the next table's
                pending.append("")
        elif m := _TABLE.match(line):
            tables.append((m.group(1), pending, []))
            pending = []
        elif m := _KEY.match(line):
            if not tables:
                raise SystemExit(f"mkman: key {m.group(1)} outside a table")
            value = m.group(2)
            if value.startswith('"""') and value.count('"""') == 1:  # a multi-line string
                body = [value]
                for more in lines:
                    body.append(more)
                    if '"""' in more:
                        break
                else:
                    raise SystemExit(f"mkman: {m.group(1)}: unterminated multi-line string")
                value = "(a multi-line text, see the shipped policyd.toml)"
            tables[-1][2].append((m.group(1), value, pending))
            pending = []
        else:
            raise SystemExit(f"mkman: cannot document line {raw!r}")
    return header, tables


def render(source: str, template: str) -> str:
    header, tables = entries(source)
    if "" in header:  # only the first paragraph: the rest is about running the repo's example
        header = header[: header.index("")]
    body: list[str] = [".SH DESCRIPTION", *_paragraph(header), ".SH KEYS"]
    documented: dict[str, str] = {}  # key -> first table documenting it
    body.append(
        "Each key is shown with its default value. Tables and keys left out keep their defaults."
    )
    for table, intro, keys in tables:
        body.append(f".SS [{roff(table)}]")
        body.extend(_paragraph(intro))
        prev: str | None = None
        for key, default, comments in keys:
            body.append(".TP")
            body.append(f"\\fB{roff(key)}\\fR = {roff(default)}")
            text = _paragraph(comments)
            if text:
                documented.setdefault(key, table)
                prev = key
            elif prev is not None:  # one comment above a group of keys
                text = [f"See \\fB{roff(prev)}\\fR above."]
            elif key in documented:  # e.g. [profiles.mx]: the keys of [profiles.submission]
                text = [f"As \\fB{roff(key)}\\fR in [{roff(documented[key])}]."]
            else:
                raise SystemExit(f"mkman: [{table}] {key} has no comment documenting it")
            body.extend(text)
    return template.replace("@KEYS@", "\n".join(body))


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else HERE.parents[1] / "conf/policyd.toml"
    template = (HERE / "policyd.toml.5.in").read_text()
    sys.stdout.write(render(src.read_text(), template))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
