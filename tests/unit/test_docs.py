"""The README's Postfix section: the way in is `policyd postfix-lines`; nothing replaces."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_readme_is_admin_first() -> None:
    """Issue 26: the two set-up commands, then the admin's path in order; tests, performance
    and the layout live in docs/ with a pointer."""
    text = (ROOT / "README.md").read_text()
    heads = re.findall(r"^## (.+)$", text, re.M)
    path = [
        "Two commands",
        "For admins: the path",
        "Requirements",
        "Install",
        "Configure",
        "Directory: which login does your SASL give us?",
        "Plug into Postfix",
        "Roll out",
        "Operate",
        "Troubleshoot",
        "Upgrade",
    ]
    assert heads[: len(path)] == path
    for moved in ("Tests", "Performance", "Layout"):
        assert moved not in heads
    for doc in ("docs/testing.md", "docs/performance.md", "docs/layout.md"):
        assert (ROOT / doc).is_file() and f"]({doc})" in text
    install = _section(text, "## Install")
    assert install.index("### Debian 13: the packages") < install.index("### Debian 12")
    assert "apt install ./policyd_" in install and "pip install '.[" in install


def test_readme_names_no_package_pip_cannot_find() -> None:
    """policyd is not on PyPI: the README installs it from the source tree or the .deb, and
    the web page from its package, not by copying a unit."""
    text = (ROOT / "README.md").read_text()
    assert not re.search(r"pip install\s+'?policyd\b", text)
    assert "policyd[" not in text
    web = _section(text, "## Self-service web page")
    assert "cp systemd/" not in web and "policyd-web` package" in web


@functools.cache
def _help(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "policyd", *args, "--help"],
        capture_output=True, text=True, check=True, timeout=30, cwd=ROOT,
    ).stdout  # fmt: skip


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def test_every_policyd_command_and_option_in_the_readme_exists() -> None:
    """Each `policyd COMMAND [SUBCOMMAND] --option` the README shows is one `policyd --help`
    has, in its place (`policyd senders --json list`, not `senders list --json`)."""
    text = (ROOT / "README.md").read_text()
    top = set(re.search(r"\{([a-z,-]+)\}", _help()).group(1).split(","))  # type: ignore[union-attr]
    uses = re.findall(r"(?<![\w/.-])policyd ([a-z][a-z-]*)([^`\n]*)", text)
    assert len(uses) > 30
    checked = 0
    for cmd, rest in uses:
        if cmd not in top:
            continue  # prose ("policyd looks up ...")
        m = re.search(r"\{([a-z,-]+)\}", _help(cmd))
        subs = set(m.group(1).split(",")) if m else set()
        before, sub, after = "", "", rest
        if subs:
            words = re.match(r"((?:\s*\[?--[a-z-]+\]?)*)\s*([a-z][a-z|-]*)(.*)", rest)
            if not words:  # `policyd senders` alone, or `policyd senders …`
                continue
            before, sub, after = words.group(1), words.group(2).split("|")[0], words.group(3)
            assert sub in subs, f"README: policyd {cmd} {sub}"
            assert _options(before) <= _options(_help(cmd)), f"README: policyd {cmd}{rest}"
        args = (cmd, sub) if sub else (cmd,)
        for opt in _options(after):
            assert opt in _options(_help(*args)), f"README: policyd {' '.join(args)} {opt}"
        checked += 1
    assert checked > 30


def test_readme_and_moved_docs_link_only_to_what_exists() -> None:
    """Every relative link of the README and of the docs moved out of it names a file of the
    tree, and every #anchor of the README one of its headings (GitHub's slugs)."""
    if not (ROOT / "setup.py").is_file():  # (tests/debian and the .deb's build-time run:
        pytest.skip("not a whole checkout: the links name files of the source tree")  # no .ci/)
    for name in ("README.md", "docs/testing.md", "docs/performance.md", "docs/layout.md"):
        doc = ROOT / name
        text = doc.read_text()
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not link.startswith(("http://", "https://")):
                assert (doc.parent / link).exists(), f"{name}: {link}"
    text = (ROOT / "README.md").read_text()
    slugs = {
        re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in slugs, f"README.md: #{anchor}"


def test_every_config_key_the_readme_names_exists() -> None:
    """`server.listen`, `[milter] listen`, `verification.mail.smtp_port` ...: each key the
    README names is one conf/policyd.toml documents (profiles and quota overrides are tables
    the admin names)."""
    import tomllib

    keys: set[str] = set()

    def walk(table: dict[str, object], prefix: str = "") -> None:
        for k, v in table.items():
            keys.add(prefix + k)
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(tomllib.loads((ROOT / "conf/policyd.toml").read_text()))
    tops = "|".join(sorted({k.split(".")[0] for k in keys}))
    text = (ROOT / "README.md").read_text()
    named = {m.rstrip(".") for m in re.findall(rf"`((?:{tops})\.[a-z_.]+)`", text)}
    named |= {f"{t}.{k}" for t, k in re.findall(r"`\[([a-z_.]+)\] ([a-z_]+)", text)}
    assert len(named) > 20
    free = ("profiles.", "quotas.domains.", "quotas.logins.")
    unknown = sorted(k for k in named if k not in keys and not k.startswith(free))
    assert not unknown, unknown
