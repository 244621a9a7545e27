"""The README's Postfix lines are the shipped fragments (which the system tests run)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _code_lines(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def test_readme_postfix_block_is_taken_from_conf_postfix() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Plug into Postfix") :]
    block = section[section.index("```\n") + 4 :]
    block = block[: block.index("```")]
    shipped = _code_lines(ROOT / "conf/postfix/main.cf") + _code_lines(
        ROOT / "conf/postfix/master.cf"
    )
    quoted = [
        ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    assert len(quoted) > 20
    # every quoted line is a shipped line, in the shipped order
    pos = 0
    for ln in quoted:
        assert ln in shipped[pos:], f"README line not in conf/postfix (or out of order): {ln!r}"
        pos = shipped.index(ln, pos) + 1


def test_readme_milter_lines_are_shipped() -> None:
    text = (ROOT / "README.md").read_text()
    shipped = _code_lines(ROOT / "conf/postfix/milter.cf")
    for ln in (
        "smtpd_milters = unix:/run/policyd-milter/milter.sock",
        "milter_protocol = 6",
        "milter_default_action = tempfail",
    ):
        assert ln in text and ln in shipped
