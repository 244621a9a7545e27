"""What the admin's commands on a running setup (`policyd senders`, `policyd quota`) share:
their parser's head and loading the config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policyd.config import Config


def add_command(sub: Any, name: str, help: str, description: str, dest: str) -> Any:
    """Register `name` with --config and --json on the main parser's subparsers; its own
    subcommands' subparsers (the chosen one in args.<dest>)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", "-c", type=Path, default=None, help="TOML config file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p.add_subparsers(dest=dest, required=True)


def load(args: argparse.Namespace) -> Config | None:
    """The config of --config (or the default); None after saying why on stderr."""
    from policyd.config import DEFAULT_CONFIG, ConfigError, load_config

    try:
        return load_config(args.config or DEFAULT_CONFIG)
    except ConfigError as e:
        print(f"policyd: {e}", file=sys.stderr)
        return None
