"""The man pages: policyd.toml(5) is generated from conf/policyd.toml and lists every key;
policyd(8) describes every command and option the CLI has."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAN = REPO / "docs/man"


def _generated() -> str:
    return subprocess.run(
        [sys.executable, str(MAN / "mkman.py"), str(REPO / "conf/policyd.toml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def _tables(doc: dict[str, object], prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out.update(_tables(v, f"{prefix}{k}."))
        else:
            out.setdefault(prefix.rstrip("."), []).append(k)
    return out


def test_policyd_toml_5_has_every_key_of_the_documented_config_with_its_default() -> None:
    page = _generated()
    doc = tomllib.loads((REPO / "conf/policyd.toml").read_text())
    sections = {
        m.group(1).replace("\\-", "-"): m.group(2)
        for m in re.finditer(r"^\.SS \[([^\]]+)\]\n(.*?)(?=^\.SS |^\.SH |\Z)", page, re.M | re.S)
    }
    tables = _tables(doc)
    assert set(sections) == set(tables)
    for table, keys in tables.items():
        for key in keys:
            entry = re.search(
                rf"^\.TP\n\\fB{re.escape(key)}\\fR = (.*)\n(.+)", sections[table], re.M
            )
            assert entry, f"[{table}] {key} missing from policyd.toml(5)"
            assert entry.group(2).strip(), f"[{table}] {key} has no description"
    assert "@KEYS@" not in page and page.startswith('.\\"')


def _help(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "policyd", *args, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=REPO,
    ).stdout


def test_policyd_8_describes_every_command_and_option() -> None:
    page = (MAN / "policyd.8").read_text().replace("\\-", "-")
    commands = re.search(r"\{([a-z,-]+)\}", _help()).group(1).split(",")  # type: ignore[union-attr]
    assert {"serve", "check", "config-check", "milter"} <= set(commands)
    for cmd in commands:
        assert re.search(rf"^\.B {re.escape(cmd)}$", page, re.M), f"command {cmd}"
        for opt in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", _help(cmd))) - {"--help"}:
            assert opt in page, f"policyd {cmd} {opt} not in policyd(8)"
    for sig in ("SIGHUP", "SIGTERM"):
        assert sig in page


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed")
def test_both_man_pages_render_without_warnings(tmp_path: Path) -> None:
    gen = tmp_path / "policyd.toml.5"
    gen.write_text(_generated())
    for page in (gen, MAN / "policyd.8"):
        r = subprocess.run(
            ["man", "--warnings", "-l", str(page)],
            capture_output=True,
            text=True,
            timeout=30,
            env={"LC_ALL": "C.UTF-8", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 0 and r.stderr == "", (page.name, r.stderr)
        assert "policyd" in r.stdout


def test_both_man_pages_have_postfix_integration_and_examples() -> None:
    """Issue 26: each page says how it meets Postfix and shows examples."""
    for page in (_generated(), (MAN / "policyd.8").read_text()):
        heads = re.findall(r"^\.SH (.+)$", page, re.M)
        assert "POSTFIX INTEGRATION" in heads and "EXAMPLES" in heads, heads
        assert heads.index("EXAMPLES") < heads.index("SEE ALSO")
    assert "postfix\\-lines" in (MAN / "policyd.8").read_text().split(".SH EXAMPLES")[1]


def test_policyd_toml_5_examples_are_valid_configs(tmp_path: Path) -> None:
    """Every example of policyd.toml(5) loads: the page shows keys and values that exist."""
    from policyd.config import load_config

    examples = _generated().split(".SH EXAMPLES", 1)[1].split("\n.SH ", 1)[0]
    blocks = re.findall(r"^\.nf\n\.RS\n(.*?)^\.RE\n\.fi$", examples, re.M | re.S)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        config = tmp_path / f"example{i}.toml"
        config.write_text(block.replace("\\-", "-"))
        assert tomllib.loads(config.read_text())  # not empty
        load_config(config)  # raises ConfigError naming the key if the page is wrong
