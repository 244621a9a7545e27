"""The README's Postfix section: the way in is `policyd postfix-lines`; nothing replaces."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section(text: str, title: str) -> str:
    body = text[text.index(title) + len(title) :]
    return body[: body.index("\n## ")]


#: A line that sets a Postfix parameter or a master.cf service by itself (what an admin pastes
#: and what replaces their own setting), as opposed to a postconf command that inserts.
_REPLACING = re.compile(
    r"^\s*(?:[a-z_]+\s*=|-o\s|[\w.:\[\]-]+\s+(?:inet|unix|pass|fifo|unix-dgram)\s)"
)


def test_readme_postfix_section_replaces_nothing() -> None:
    """Issue 26: the README's Postfix section (and the milter's Postfix bullet) contain no
    line that replaces a setting an admin may already have: the only way in is
    `policyd postfix-lines`, whose commands insert."""
    text = (ROOT / "README.md").read_text()
    for title in ("## Plug into Postfix", "## Milter: the header From: must belong"):
        section = _section(text, title)
        blocks = re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
        indented = re.findall(r"^      (\S.*)$", section, re.M)  # indented code in a list item
        for block in blocks + indented:
            for line in block.splitlines():
                assert not _REPLACING.match(line), f"{title}: a replacing line: {line!r}"
        assert "policyd postfix-lines" in section
    plug = _section(text, "## Plug into Postfix")
    # the commands it shows are postconf commands, each inserting into the admin's value
    for line in re.findall(r"^postconf .*$", plug, re.M):
        assert line.startswith(("postconf -e ", "postconf -P ")), line
    assert "milter_default_action = " not in plug
    assert "smtpd_sasl_type" not in plug
