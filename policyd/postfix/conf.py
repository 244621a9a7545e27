"""The live Postfix through postconf, its lists parsed, and policyd's endpoints as Postfix
names them."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from policyd.config import Config
from policyd.config.listen import parse_listen

#: What Postfix answers when policyd cannot be reached (fail closed: retried, never bounced).
POLICY_DEFAULT_ACTION = "451 4.3.5 Sender policy service unavailable; try again later"

#: Restrictions that refuse relaying to other domains: the port-25 policy goes after one.
UNAUTH_DESTINATION = ("reject_unauth_destination", "defer_unauth_destination")

#: Service names (or ports) of the submission services: 587 and 465.
SUBMISSION_NAMES = ("submission", "587")
SUBMISSIONS_NAMES = ("submissions", "smtps", "465")


class PostconfError(Exception):
    """postconf could not be run or failed: the message says why."""


@dataclass
class Service:
    """One master.cf entry (`postconf -M`) and its -o overrides (`postconf -P`)."""

    name: str
    type: str
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """How `postconf -P` names it: service/type."""
        return f"{self.name}/{self.type}"

    @property
    def port(self) -> str:
        """The port part of an inet service's name (`127.0.0.1:submission` -> submission)."""
        return self.name.rsplit(":", 1)[-1]

    @property
    def chrooted(self) -> bool:
        # "-" is the built-in default, "n" since Postfix 3.0 (Debian's master.cf writes "y")
        return self.chroot == "y"

    @property
    def is_smtpd(self) -> bool:
        return self.command.split()[0] == "smtpd" if self.command else False


@dataclass
class Postfix:
    """main.cf (every parameter, raw), the names set in it, and master.cf's services."""

    main: dict[str, str]
    set_names: set[str]
    services: list[Service]

    def value(self, service: Service | None, name: str) -> str:
        """The raw value a service uses: its -o override, else main.cf's."""
        if service is not None and name in service.overrides:
            return service.overrides[name]
        return self.main.get(name, "")

    def expanded(self, service: Service | None, name: str) -> str:
        """value(), with $name and ${name} of main.cf replaced (so lists kept in a parameter
        of their own, as $mua_relay_restrictions, are seen)."""
        return self.expand(self.value(service, name))

    def expand(self, value: str, depth: int = 0) -> str:
        if depth > 10 or "$" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name not in self.main:
                return m.group(0)
            return self.expand(self.main[name], depth + 1)

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, value)

    def smtpd_services(self) -> list[Service]:
        return [s for s in self.services if s.is_smtpd]

    def port25(self) -> Service | None:
        """The smtpd that handles port 25: postscreen's `smtpd pass` service (postscreen only
        ever guards port 25), else the smtpd listening on smtp/25."""
        if any(
            s.command.split()[0] == "postscreen"
            for s in self.services
            if s.type == "inet" and s.command
        ):
            for s in self.services:
                if s.type == "pass" and s.is_smtpd:
                    return s
            return None
        for s in self.services:
            if s.type == "inet" and s.is_smtpd and s.port in ("smtp", "25"):
                return s
        return None

    def submission_services(self) -> list[Service]:
        """smtpd services on 587 or 465: by port, or by Debian's syslog_name for them."""
        names = SUBMISSION_NAMES + SUBMISSIONS_NAMES
        return [
            s
            for s in self.services
            if s.type == "inet"
            and s.is_smtpd
            and (s.port in names or s.overrides.get("syslog_name", "").rpartition("/")[2] in names)
        ]

    @property
    def queue_directory(self) -> str:
        return self.main.get("queue_directory", "/var/spool/postfix")


def _postconf(config_dir: str | None, *args: str) -> str:
    cmd = ["postconf"]
    if config_dir:
        cmd += ["-c", config_dir]
    cmd += list(args)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise PostconfError("postconf not found: is Postfix installed?") from None
    except subprocess.TimeoutExpired:
        raise PostconfError(f"{shlex.join(cmd)}: no answer in 30 s") from None
    if r.returncode != 0:
        why = r.stderr.strip().splitlines()
        raise PostconfError(f"{shlex.join(cmd)} failed: {why[-1] if why else r.returncode}")
    return r.stdout


def _assignments(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            yield name.strip(), value.strip()
        elif line.endswith(" ="):
            yield line[:-2].strip(), ""


def read_postfix(config_dir: str | None = None) -> Postfix:
    """The live Postfix (or the one in config_dir) through postconf. Raises PostconfError."""
    main = dict(_assignments(_postconf(config_dir)))
    set_names = {n for n, _ in _assignments(_postconf(config_dir, "-n"))}
    services: list[Service] = []
    for line in _postconf(config_dir, "-M").splitlines():
        cols = line.split(None, 7)
        if len(cols) < 8:
            continue
        command = cols[7]
        # the -o options are in `postconf -P`: keep the command and its plain arguments
        words = shlex.split(command.replace("{", "'").replace("}", "'"), posix=True)
        plain = [w for i, w in enumerate(words) if w != "-o" and (i == 0 or words[i - 1] != "-o")]
        name, type_, private, unpriv, chroot, wakeup, maxproc = cols[:7]
        services.append(
            Service(name, type_, private, unpriv, chroot, wakeup, maxproc, " ".join(plain))
        )
    by_key = {s.key: s for s in services}
    for name, value in _assignments(_postconf(config_dir, "-P")):
        svc, _, param = name.rpartition("/")
        if svc in by_key:
            by_key[svc].overrides[param] = value
    return Postfix(main, set_names, services)


# ---------------------------------------------------------------------------------------------
# Restriction lists: top-level elements with their positions in the admin's text


@dataclass(frozen=True)
class Element:
    text: str
    start: int
    end: int


def elements(value: str) -> list[Element]:
    """The top-level words and { … } groups of a Postfix list, with their offsets."""
    out: list[Element] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch.isspace() or ch == ",":
            i += 1
            continue
        start = i
        if ch == "{":
            depth = 0
            while i < n:
                if value[i] == "{":
                    depth += 1
                elif value[i] == "}":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            while i < n and not value[i].isspace() and value[i] not in ",{":
                i += 1
        out.append(Element(value[start:i], start, i))
    return out


@dataclass(frozen=True)
class PolicyCall:
    """A check_policy_service in a list: its endpoint and its attributes."""

    endpoint: str
    attributes: Mapping[str, str]
    default_action: str | None


def policy_calls(value: str) -> list[PolicyCall]:
    """Every check_policy_service of a restriction list (plain or { … } form)."""
    els = elements(value)
    calls = []
    for i, el in enumerate(els):
        if el.text != "check_policy_service" or i + 1 >= len(els):
            continue
        arg = els[i + 1].text
        if not arg.startswith("{"):
            calls.append(PolicyCall(arg, {}, None))
            continue
        inner = elements(arg[1:-1])
        endpoint = inner[0].text if inner else ""
        attrs: dict[str, str] = {}
        default_action = None
        for part in inner[1:]:
            if part.text.startswith("{"):
                name, _, val = part.text[1:-1].partition("=")
                if name.strip() == "default_action":
                    default_action = val.strip()
                continue
            name, _, val = part.text.partition("=")
            attrs[name.strip()] = val.strip()
        calls.append(PolicyCall(endpoint, attrs, default_action))
    return calls


def milter_entries(value: str) -> list[tuple[str, dict[str, str]]]:
    """(address, per-milter settings) of each milter in smtpd_milters."""
    out = []
    for el in elements(value):
        if el.text.startswith("{"):
            inner = elements(el.text[1:-1])
            if not inner:
                continue
            settings = {}
            for part in inner[1:]:
                name, _, val = part.text.partition("=")
                settings[name.strip()] = val.strip()
            out.append((inner[0].text, settings))
        else:
            out.append((el.text, {}))
    return out


# ---------------------------------------------------------------------------------------------
# Our endpoints as Postfix names them


def policy_endpoint(config: Config, pf: Postfix) -> str:
    """check_policy_service's address for policyd: its first TCP listener (reachable from a
    chrooted smtpd), else its unix socket as smtpd sees it."""
    unix = None
    for spec in config.server.listen:
        kind, host, port = parse_listen(spec)
        if kind == "tcp":
            shown = f"[{host}]" if host and ":" in host else host
            return f"inet:{shown}:{port}"
        unix = unix or host
    assert unix is not None
    return "unix:" + _as_smtpd_sees(unix, pf)


def milter_endpoint(config: Config, pf: Postfix) -> str:
    """smtpd_milters' address for `policyd milter` ([milter] listen)."""
    spec = config.milter.listen
    if spec.startswith("unix:"):
        return "unix:" + _as_smtpd_sees(spec[5:], pf)
    kind, _, rest = spec.partition(":")
    port, _, host = rest.partition("@")
    host = host or "127.0.0.1"
    return f"{kind}:{'[' + host + ']' if ':' in host else host}:{port}"


def _as_smtpd_sees(path: str, pf: Postfix) -> str:
    """A unix socket path as every smtpd reaches it: relative to the queue directory when it
    is inside it (smtpd's working directory, chrooted or not), else the path itself."""
    rel = under_queue(path, pf)
    return rel if rel is not None else path


def under_queue(path: str, pf: Postfix) -> str | None:
    try:
        return str(PurePosixPath(path).relative_to(pf.queue_directory))
    except ValueError:
        return None


def unreachable_from_chroot(address: str, pf: Postfix) -> bool:
    """A unix: address with an absolute path: a chrooted smtpd looks for it inside the queue
    directory, where it is not."""
    return address.startswith("unix:/") and any(s.chrooted for s in pf.smtpd_services())


def policy_block(endpoint: str, context: str) -> str:
    return (
        f"check_policy_service {{ {endpoint}, policy_context={context}, "
        f"{{ default_action = {POLICY_DEFAULT_ACTION} }}, timeout=10s, max_idle=300s }}"
    )


def milter_block(endpoint: str) -> str:
    return f"{{ {endpoint}, default_action=tempfail }}"


def is_ours(endpoint: str, ours: str) -> bool:
    return endpoint.strip() == ours


def has_ours(value: str, endpoint: str) -> bool:
    return any(is_ours(c.endpoint, endpoint) for c in policy_calls(value))
