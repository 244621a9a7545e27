"""The `policyd` command: serve, check, config-check, milter."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from policyd import __version__
from policyd.config import DEFAULT_CONFIG, Config, ConfigError, parse_listen
from policyd.runtime import Runtime

log = logging.getLogger("policyd")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policyd",
        description="Postfix policy daemon: relay for allocated networks and SASL logins, "
        "and only for sender addresses the login owns.",
    )
    p.add_argument("--version", action="version", version=f"policyd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            "-c",
            type=Path,
            default=None,
            help=f"TOML config file (default: the shipped example {DEFAULT_CONFIG})",
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

    c = sub.add_parser("check", help="decide one request and explain why")
    add_config(c)
    c.add_argument("--client-address", required=True)
    c.add_argument("--sasl-username", default="")
    c.add_argument("--sender", required=True, help='envelope sender ("" for <>)')
    c.add_argument("--recipient", default="postmaster@example.net")
    c.add_argument("--policy-context", default="")
    c.add_argument("--server-port", default="")
    c.add_argument("--protocol-state", default="RCPT")

    k = sub.add_parser("config-check", help="validate the config and summarise it")
    add_config(k)
    k.add_argument(
        "--connect", action="store_true", help="also connect and bind to the LDAP servers"
    )

    m = sub.add_parser("milter", help="run the header From: milter (needs pymilter)")
    add_config(m)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cmd = args.command
    if cmd == "serve":
        return _serve(args)
    if cmd == "check":
        return _check(args)
    if cmd == "config-check":
        return _config_check(args)
    if cmd == "milter":
        return _milter(args)
    return 2  # pragma: no cover


def _load(path: Path | None) -> tuple[Path, Config, Runtime]:
    from policyd.app import load

    cfg_path = path or DEFAULT_CONFIG
    config, runtime = load(cfg_path)
    return cfg_path, config, runtime


def _fail(msg: str) -> int:
    print(f"policyd: {msg}", file=sys.stderr)
    return 1


def _serve(args: argparse.Namespace) -> int:
    if args.stdio:
        return _serve_stdio(args)
    from policyd.app import LOAD_ERRORS, App, serve
    from policyd.config import load_config
    from policyd.observability import setup_logging
    from policyd.runtime import build_runtime
    from policyd.systemd import Notifier, listen_fds, watchdog_interval

    # Socket activation first (it also unsets LISTEN_* so that no child takes the fds).
    passed = listen_fds()
    notify = Notifier()
    cfg_path = args.config or DEFAULT_CONFIG
    try:
        config = load_config(cfg_path)
    except ConfigError as e:
        notify(f"STATUS=config error: {e}")
        return _fail(str(e))
    lc = config.logging
    if (
        lc.target == "syslog"
        and lc.syslog_address.startswith("/")
        and not os.path.exists(lc.syslog_address)
    ):
        return _fail(
            f'{cfg_path}: logging.target = "syslog", but {lc.syslog_address} does not exist'
        )
    setup_logging(lc.level, lc.target, lc.syslog_address, lc.syslog_facility)
    if args.listen:
        for spec in args.listen:
            try:
                parse_listen(spec)
            except ValueError as e:
                return _fail(f"--listen: {e}")
    metrics = None
    if config.metrics.enabled:
        try:
            from policyd.metrics import Metrics
        except ImportError as e:
            if not (e.name or "").startswith("prometheus_client"):
                raise
            return _fail(
                f"{cfg_path}: metrics.enabled = true needs prometheus-client: "
                "pip install 'policyd[metrics]' (or set metrics.enabled = false)"
            )
        metrics = Metrics()
    try:
        runtime = build_runtime(config)
    except LOAD_ERRORS as e:
        notify(f"STATUS=config error: {e}")
        return _fail(str(e))
    sockets = [sock for _, sock in passed]
    if sockets:
        names = ", ".join(name or "?" for name, _ in passed)
        log.info(
            "socket activation: serving %d passed socket(s) (%s); %s ignored",
            len(sockets),
            names,
            "--listen" if args.listen else "server.listen",
        )
        listen: list[str] = []
    else:
        listen = list(args.listen or config.server.listen)
    watchdog = watchdog_interval()

    async def run() -> None:
        app = App(Path(cfg_path), config, runtime, metrics=metrics)
        app.notify = notify
        app.listen_from_config = not (args.listen or sockets)
        await serve(app, listen, sockets, watchdog=watchdog)

    try:
        _run(run())
    except OSError as e:
        notify(f"STATUS={e}")
        return _fail(str(e))
    except KeyboardInterrupt:
        pass
    return 0


def _serve_stdio(args: argparse.Namespace) -> int:
    """`serve --stdio` (Postfix spawn(8)): stdin, stdout and stderr are the Postfix socket, so
    nothing but replies may reach fds 1 and 2. Logs go to syslog when logging.target =
    "syslog", else nowhere."""
    from policyd.app import LOAD_ERRORS, App, serve_stdio
    from policyd.config import load_config
    from policyd.observability import setup_logging
    from policyd.runtime import build_runtime

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

    cfg_path = args.config or DEFAULT_CONFIG
    try:
        config = load_config(cfg_path)
    except ConfigError as e:
        return fatal(str(e))
    lc = config.logging
    if lc.target == "syslog":
        # (without a syslog socket the records are dropped: never stderr, the Postfix socket)
        setup_logging(lc.level, "syslog", lc.syslog_address, lc.syslog_facility)
    root.setLevel(lc.level.upper())
    if args.listen:
        log.warning("serve --stdio: --listen ignored")
    if config.metrics.enabled:
        log.info("serve --stdio: no metrics endpoint in this mode (one process per connection)")
    try:
        runtime = build_runtime(config)
    except LOAD_ERRORS as e:
        return fatal(str(e))

    async def run() -> None:
        app = App(Path(cfg_path), config, runtime)
        try:
            await serve_stdio(app, 0, out_fd)
        finally:
            app.close()

    try:
        asyncio.run(run())
    except (BrokenPipeError, ConnectionResetError):
        return 0  # Postfix went away mid-reply: nothing to tell it
    except Exception as e:  # logged, never printed: stderr is the Postfix socket
        log.exception("serve --stdio failed")
        return fatal(f"serve --stdio failed: {e}")
    return 0


def _run(coro: object) -> None:
    """uvloop when it is installed (policyd[fast]) unless POLICYD_NO_UVLOOP is set."""
    import os

    if not os.environ.get("POLICYD_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)  # type: ignore[arg-type]
            return
    asyncio.run(coro)  # type: ignore[arg-type]


def _check(args: argparse.Namespace) -> int:
    from policyd.app import LOAD_ERRORS
    from policyd.engine import to_action
    from policyd.service import PolicyService

    logging.basicConfig(level=logging.WARNING, format="policyd: %(levelname)s %(message)s")
    try:
        _, config, runtime = _load(args.config)
    except LOAD_ERRORS as e:
        return _fail(str(e))
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": args.protocol_state,
        "protocol_name": "ESMTP",
        "client_address": args.client_address,
        "client_name": "unknown",
        "sasl_username": args.sasl_username,
        "sasl_method": "PLAIN" if args.sasl_username else "",
        "sender": args.sender.strip("<>"),
        "recipient": args.recipient,
        "policy_context": args.policy_context,
        "server_port": args.server_port,
    }
    service = PolicyService(runtime)

    async def go() -> None:
        profile, decision = await service.decide(attrs)
        print(f"action={to_action(decision)}")
        print(f"reason={decision.reason.value}")
        print(f"profile={profile.name} (role {profile.role}, mode {profile.mode})")
        if decision.would_have:
            print(f"would_have={decision.would_have}")
        rng = runtime.networks.lookup(args.client_address)
        if rng is None:
            print(f"client {args.client_address}: in no allocated range")
        else:
            doms = ", ".join(sorted(rng.domains)) if rng.domains is not None else "any"
            print(
                f"client {args.client_address}: in range {rng.label} ({rng.pattern}, {rng.source}); sender domains: {doms}"
            )
        if args.sasl_username:
            from policyd.addresses import canonical_login
            from policyd.directory.base import DirectoryUnavailable

            login = canonical_login(args.sasl_username, runtime.rules)
            try:
                owned = await runtime.lookups.addresses_of(login)
            except DirectoryUnavailable as e:
                print(f"login {login}: directory unavailable: {e}")
            else:
                listing = ", ".join(sorted(owned)) if owned else "(none: unknown login)"
                print(f"login {login}: owns {listing}")
        runtime.close()

    asyncio.run(go())
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from policyd.app import LOAD_ERRORS

    try:
        cfg_path, config, runtime = _load(args.config)
    except LOAD_ERRORS as e:
        return _fail(str(e))
    print(f"config {cfg_path}: OK")
    print(f"ranges: {runtime.networks.summary()}")
    d = runtime.directory
    if config.directory.backend == "file":
        from policyd.directory.static import StaticDirectory

        assert isinstance(d, StaticDirectory)
        print(f"directory: file {d.source}: {d.logins} logins, {d.addresses} addresses")
    else:
        print(f"directory: ldap {', '.join(config.ldap.servers)} base {config.ldap.user_base}")
    for name, p in config.profiles.items():
        ports = ",".join(map(str, p.ports)) or "-"
        default = " (default)" if name == config.policy.default_profile else ""
        print(
            f"profile {name}{default}: role {p.role}, mode {p.mode}, state {p.check_state}, "
            f"ports {ports}, accept {p.accept_action}, null sender {p.null_sender}, "
            f"protect_local_senders {'on' if p.protect_local_senders else 'off'}"
        )
    print(f"listen: {', '.join(config.server.listen)}")
    rc = 0
    if args.connect:
        if config.directory.backend != "ldap":
            print('--connect: nothing to connect to (directory.backend is "file")')
        else:
            from policyd.directory.ldap import check_connection

            ok, lines = check_connection(config.ldap)
            for line in lines:
                print(line)
            rc = 0 if ok else 1
    runtime.close()
    return rc


def _milter(args: argparse.Namespace) -> int:
    try:
        from policyd.milter import run_milter
    except ImportError as e:
        if "Milter" in str(e) or "milter" in str(e):
            return _fail(
                "the milter needs pymilter: pip install 'policyd[milter]' "
                "(on Debian first: apt-get install libmilter-dev)"
            )
        raise
    from policyd.app import LOAD_ERRORS

    try:
        rc: int = run_milter(args.config or DEFAULT_CONFIG)
    except LOAD_ERRORS as e:
        return _fail(str(e))
    return rc
