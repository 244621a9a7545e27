"""The `policyd` command: argument parsing, and load errors turned into one line + exit code.

Everything else lives where it belongs: the policy server's lifecycle in policy/app.py, the
milter in milter/, the web page in web/, decisions in policy/service.py / core/engine.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from policyd import __version__
from policyd.build import describe
from policyd.config import DEFAULT_CONFIG, ConfigError, config_path
from policyd.config.listen import parse_listen

log = logging.getLogger("policyd")

#: Where to start on a machine without /etc/policyd (a checkout, a plain pip install).
EXAMPLE_HINT = "to start from the shipped example: --config conf/policyd.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policyd",
        description="Postfix policy daemon: relay for allocated networks and SASL logins, "
        "and only for sender addresses the login owns.",
    )
    p.add_argument("--version", action="version", version=f"policyd {__version__} ({describe()})")
    sub = p.add_subparsers(dest="command", required=True)

    def add_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            "-c",
            type=Path,
            default=None,
            help=f"TOML config file (default: $POLICYD_CONFIG, else {DEFAULT_CONFIG})",
        )

    s = sub.add_parser("serve", help="run the policy server")
    add_config(s)
    s.add_argument(
        "--listen",
        "-l",
        action="append",
        default=None,
        metavar="HOST:PORT|[V6]:PORT|unix:PATH",
        help="listen here instead of server.listen (repeatable)",
    )
    s.add_argument(
        "--stdio",
        action="store_true",
        help="serve one connection on stdin/stdout (Postfix spawn(8))",
    )

    c = sub.add_parser(
        "check", help="decide one request (policy service, milter or both) and explain why"
    )
    add_config(c)
    c.add_argument("--client-address", default="127.0.0.1")
    c.add_argument("--sasl-username", default="")
    c.add_argument("--sender", default=None, help='envelope sender ("" for <>)')
    c.add_argument("--recipient", default="postmaster@example.net")
    c.add_argument("--policy-context", default="")
    c.add_argument("--server-port", default="")
    c.add_argument("--protocol-state", default="RCPT")
    c.add_argument("--header-from", default=None, help="a From: value: explain the milter")
    c.add_argument("--header-sender", default=None, help="a Sender: value (with --header-from)")

    k = sub.add_parser("config-check", help="validate the config and summarise it")
    add_config(k)
    k.add_argument(
        "--connect", action="store_true", help="also connect and bind to the LDAP servers"
    )
    k.add_argument(
        "--postfix",
        action="store_true",
        help="also check how the live Postfix uses policyd (postconf -n, -M, -P)",
    )
    k.add_argument(
        "--postfix-config",
        default=None,
        metavar="DIR",
        help="the Postfix config directory postconf reads (default: Postfix's own)",
    )

    pl = sub.add_parser(
        "postfix-lines",
        help="print the postconf commands that add policyd to the live Postfix",
    )
    add_config(pl)
    pl.add_argument(
        "--postfix-config",
        default=None,
        metavar="DIR",
        help="the Postfix config directory postconf reads (default: Postfix's own)",
    )
    pl.add_argument(
        "--relay-on-25",
        action="store_true",
        help="let clients in the allocated ranges relay on port 25 (policyd before "
        "reject_unauth_destination in that service's relay and recipient lists)",
    )

    m = sub.add_parser("milter", help="run the header From: milter (needs pymilter)")
    add_config(m)

    w = sub.add_parser("web", help="run the self-service page for sender addresses")
    add_config(w)
    w.add_argument(
        "--listen", "-l", default=None, metavar="HOST:PORT", help="instead of web.listen"
    )
    from policyd.cli import senders as senders_cli

    senders_cli.add_parser(sub)
    from policyd.cli import quota as quota_cli

    quota_cli.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.config = config_path(args.config, os.environ)
    cmd = args.command
    if cmd == "serve":
        return _serve_stdio(args) if args.stdio else _serve(args)
    if cmd == "web":
        return _web(args)
    if cmd == "check":
        from policyd.cli.explain import check

        return _guarded(args, check)
    if cmd == "config-check":
        from policyd.cli.explain import config_check

        return _guarded(args, config_check)
    if cmd == "postfix-lines":
        from policyd.cli.explain import postfix_lines

        return _guarded(args, postfix_lines)
    if cmd == "senders":
        from policyd.cli import senders as senders_cli

        return senders_cli.main(args)
    if cmd == "quota":
        from policyd.cli import quota as quota_cli

        return quota_cli.main(args)
    if cmd == "milter":
        return _milter(args)
    return 2  # pragma: no cover


def fail(msg: str) -> int:
    print(f"policyd: {msg}", file=sys.stderr)
    return 1


def load_failure(path: Path, e: Exception) -> int:
    """One line for a config/range/directory error; a missing config also says where we looked
    and how to start."""
    if isinstance(e, ConfigError) and not path.exists():
        how = "--config or $POLICYD_CONFIG" if path == DEFAULT_CONFIG else "the path"
        return fail(f"no config file at {path} (set {how}); {EXAMPLE_HINT}")
    return fail(str(e))


def _guarded(args: argparse.Namespace, command: Callable[[argparse.Namespace], int]) -> int:
    from policyd.policy.app import LOAD_ERRORS

    logging.basicConfig(level=logging.WARNING, format="policyd: %(levelname)s %(message)s")
    try:
        rc = command(args)
        sys.stdout.flush()
    except LOAD_ERRORS as e:
        return load_failure(args.config, e)
    except BrokenPipeError:
        # `policyd check … | head -1`: the reader is gone. Quietly, as Unix tools end on
        # SIGPIPE: no traceback, and nothing more written (Python's documented recipe: stdout
        # to /dev/null, so the flush at exit does not fail again).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return rc


def _serve(args: argparse.Namespace) -> int:
    from policyd.policy.app import LOAD_ERRORS
    from policyd.policy.workers import make_daemon
    from policyd.systemd import StartupError

    for spec in args.listen or ():
        try:
            parse_listen(spec)
        except ValueError as e:
            return fail(f"--listen: {e}")
    # one process (server.workers = 1), or a supervisor and its workers, or one such worker
    daemon = make_daemon(args.config, args.listen, os.environ)
    try:
        _run(daemon.serve())
    except LOAD_ERRORS as e:
        return load_failure(args.config, e)
    except (StartupError, OSError) as e:
        return fail(str(e))
    except KeyboardInterrupt:
        pass
    return 0


def _serve_stdio(args: argparse.Namespace) -> int:
    """`serve --stdio` (Postfix spawn(8)): stdin, stdout and stderr are the Postfix socket, so
    nothing but replies may reach fds 1 and 2. Logs go to syslog when logging.target =
    "syslog", else nowhere."""
    from policyd.config import load_config
    from policyd.decision_log import setup_logging
    from policyd.policy.app import LOAD_ERRORS, App
    from policyd.policy.stdio import serve_stdio

    # Replies go to a private copy of stdout; fds 1 and 2 become /dev/null, so that a stray
    # print, warning or traceback (ours or a library's) cannot corrupt the protocol stream.
    out_fd = os.dup(1)
    tty_fd = os.dup(2) if os.isatty(2) else -1
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.NullHandler())
    logging.raiseExceptions = False  # a failing log handler must not print to stderr either

    def fatal(msg: str) -> int:
        # No config (or a broken one): try syslog, where an admin of a spawn(8) service
        # looks; show it on a terminal too when run by hand.
        if os.path.exists("/dev/log"):
            setup_logging("error", "syslog")
            log.error("serve --stdio: %s", msg)
        if tty_fd >= 0:
            os.write(tty_fd, f"policyd: {msg}\n".encode())
        return 1

    try:
        lc = load_config(args.config).logging
    except ConfigError as e:
        return fatal(str(e))
    if lc.target == "syslog":
        # (without a syslog socket the records are dropped: never stderr, the Postfix socket)
        setup_logging(lc.level, "syslog", lc.syslog_address, lc.syslog_facility)
    root.setLevel(lc.level.upper())
    if args.listen:
        log.warning("serve --stdio: --listen ignored")
    app = App(args.config, configure_logging=False)
    try:
        asyncio.run(serve_stdio(app, 0, out_fd))
    except LOAD_ERRORS as e:
        return fatal(str(e))
    except (BrokenPipeError, ConnectionResetError):
        return 0  # Postfix went away mid-reply: nothing to tell it
    except Exception as e:  # logged, never printed: stderr is the Postfix socket
        log.exception("serve --stdio failed")
        return fatal(f"serve --stdio failed: {e}")
    return 0


def _run(coro: object) -> None:
    """uvloop when it is installed (policyd[fast]) unless POLICYD_NO_UVLOOP is set."""
    if not os.environ.get("POLICYD_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)  # type: ignore[arg-type]
            return
    asyncio.run(coro)  # type: ignore[arg-type]


def _milter(args: argparse.Namespace) -> int:
    try:
        from policyd.milter.libmilter import run_milter
    except ImportError as e:
        if "Milter" in str(e) or "milter" in str(e):
            return fail(
                "the milter needs pymilter: apt install policyd-milter (Debian 13), or "
                "pip install '.[milter]' in policyd's source tree (first: apt-get install "
                "libmilter-dev)"
            )
        raise
    from policyd.policy.app import LOAD_ERRORS

    try:
        rc: int = run_milter(args.config)
    except LOAD_ERRORS as e:
        return load_failure(args.config, e)
    return rc


def _web(args: argparse.Namespace) -> int:
    try:
        from policyd.web.server import run_web
    except ImportError as e:
        if (e.name or "").split(".")[0] in ("aiohttp", "jinja2"):
            return fail(
                "the web page needs aiohttp and jinja2: apt install policyd-web (Debian 13), "
                "or pip install '.[web]' in policyd's source tree"
            )
        raise
    from policyd.systemd import StartupError

    try:
        return run_web(args.config, args.listen)
    except StartupError as e:
        return fail(str(e))
