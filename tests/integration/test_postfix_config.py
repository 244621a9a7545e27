"""`policyd postfix-lines` and `policyd config-check --postfix` against the real `postconf`, on
Postfix config directories the tests write: an existing server's shape (postscreen on 25,
Dovecot SASL, an opendkim milter, a content filter re-injecting on 10025, submission and
submissions from the $mua_* lists), and deliberately broken ones, one per mistake."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import pytest

from policyd import cli
from tests.servers.requirements import require_binaries

ROOT = Path(__file__).resolve().parents[2]

#: main.cf of an existing ISP-style server (the shape of issue 26), before policyd.
EXISTING_MAIN = """\
compatibility_level = 3.6
mynetworks = 127.0.0.0/8 [::1]/128
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination,
    check_client_access cidr:/etc/postfix/access.cidr, reject_rbl_client rbl.example, permit
smtpd_milters = inet:127.0.0.1:8891
non_smtpd_milters = $smtpd_milters
milter_default_action = accept
content_filter = smtp-amavis:[127.0.0.1]:10024
postscreen_access_list = permit_mynetworks, cidr:/etc/postfix/postscreen_access.cidr
mua_relay_restrictions = permit_sasl_authenticated, reject
"""

EXISTING_MASTER = """\
smtp      inet  n       -       y       -       1       postscreen
smtpd     pass  -       -       y       -       -       smtpd
dnsblog   unix  -       -       y       -       0       dnsblog
tlsproxy  unix  -       -       y       -       0       tlsproxy
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_relay_restrictions=$mua_relay_restrictions
  -o milter_macro_daemon_name=ORIGINATING
submissions inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=$mua_relay_restrictions
  -o milter_macro_daemon_name=ORIGINATING
smtp-amavis unix -      -       n       -       2       smtp
127.0.0.1:10025 inet n  -       n       -       -       smtpd
  -o content_filter=
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8
  -o smtpd_milters=
"""

MILTER_SOCKET = "/var/spool/postfix/policyd/milter.sock"


@pytest.fixture(autouse=True)
def _need_postconf() -> None:
    require_binaries("postconf", why="the Postfix config checks run the real postconf")


def policyd(*args: str) -> subprocess.CompletedProcess[str]:
    """`policyd ARGS` (the CLI's main, in this process: postconf is what runs outside; the
    entry point itself is tested by test_cli.py). Exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(list(args))
        except SystemExit as e:  # (argparse)
            rc = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(["policyd", *args], rc, out.getvalue(), err.getvalue())


def postconf(etc: Path, *args: str) -> str:
    r = subprocess.run(
        ["postconf", "-c", str(etc), *args], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    return r.stdout


def assignments(text: str) -> dict[str, str]:
    """postconf's "name = value" lines (an empty value is printed as "name =")."""
    out = {}
    for ln in text.splitlines():
        name, _, value = ln.partition(" =")
        out[name] = value.removeprefix(" ")
    return out


def write_postfix(tmp_path: Path, main: str, master: str, name: str = "etc") -> Path:
    etc = tmp_path / name
    etc.mkdir()
    (etc / "main.cf").write_text(main)
    (etc / "master.cf").write_text(master)
    return etc


def write_policyd(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "senders.txt").write_text("alice@example.org: alice@example.org\n")
    p = tmp_path / "policyd.toml"
    p.write_text(f'[milter]\nlisten = "unix:{MILTER_SOCKET}"\n{extra}')
    return p


def lines(cfg: Path, etc: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return policyd("postfix-lines", "-c", str(cfg), "--postfix-config", str(etc), *more)


def apply(etc: Path, out: str) -> list[str]:
    """Run the postconf commands postfix-lines printed (only those: nothing else is run)."""
    commands = [ln for ln in out.splitlines() if ln.startswith("postconf ")]
    for command in commands:
        r = subprocess.run(["sh", "-ec", command], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{command}: {r.stderr}"
    return commands


def check(cfg: Path, etc: Path) -> subprocess.CompletedProcess[str]:
    return policyd("config-check", "-c", str(cfg), "--postfix", "--postfix-config", str(etc))


def problems(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in r.stdout.splitlines() if ln.startswith("postfix: ") and "OK" not in ln]


# ---------------------------------------------------------------------------------------------
# postfix-lines on an existing server: inserts, never replaces


def test_postfix_lines_insert_into_an_existing_server(tmp_path: Path) -> None:
    etc = write_postfix(tmp_path, EXISTING_MAIN, EXISTING_MASTER)
    cfg = write_policyd(tmp_path)
    before_n = assignments(postconf(etc, "-n"))
    before_m = postconf(etc, "-M")
    r = lines(cfg, etc)
    assert r.returncode == 0, r.stderr
    commands = apply(etc, r.stdout)
    assert commands, r.stdout
    after_n = assignments(postconf(etc, "-n"))
    # never touched: SASL, the relay list, the global milter action, postscreen, the filter
    for name in (
        "smtpd_sasl_type",
        "smtpd_sasl_path",
        "smtpd_sasl_auth_enable",
        "smtpd_relay_restrictions",
        "milter_default_action",
        "non_smtpd_milters",
        "content_filter",
        "postscreen_access_list",
        "mynetworks",
        "mua_relay_restrictions",
    ):
        assert after_n[name] == before_n[name], name
    # port 25: after reject_unauth_destination, before the admin's access rule and RBL
    rcpt = after_n["smtpd_recipient_restrictions"]
    assert rcpt.startswith("permit_mynetworks, reject_unauth_destination, check_policy_service {")
    assert "policy_context=mx" in rcpt
    assert rcpt.index("policy_context=mx") < rcpt.index("check_client_access")
    assert rcpt.endswith(
        "check_client_access cidr:/etc/postfix/access.cidr, reject_rbl_client rbl.example, permit"
    )
    # the milter only where logins happen (protect_local_senders off: nothing to check on 25):
    # main.cf's smtpd_milters (opendkim, for port 25) untouched
    assert after_n["smtpd_milters"] == "inet:127.0.0.1:8891"
    # master.cf: the same services, the postscreen line as it was
    after_m = postconf(etc, "-M")
    assert [ln.split()[:8] for ln in after_m.splitlines()][:4] == [
        ln.split()[:8] for ln in before_m.splitlines()
    ][:4]
    assert len(after_m.splitlines()) == len(before_m.splitlines())
    overrides = assignments(postconf(etc, "-P"))
    for svc in ("submission/inet", "submissions/inet"):
        name = overrides[f"{svc}/smtpd_relay_restrictions"]
        assert name.startswith("$policyd_"), name
        expanded = postconf(etc, "-xh", name[1:]).strip()
        assert expanded.startswith("check_policy_service { inet:127.0.0.1:10040,")
        assert "policy_context=submission" in expanded
        # the admin's own list still follows
        assert expanded.endswith("permit_sasl_authenticated, reject")
        # the other -o options are kept
        assert overrides[f"{svc}/milter_macro_daemon_name"] == "ORIGINATING"
        # its milters: opendkim first (copied from main.cf), ours appended with its own action
        milters = overrides[f"{svc}/smtpd_milters"]
        assert milters.startswith("$policyd_"), milters
        assert postconf(etc, "-xh", milters[1:]).strip() == (
            "inet:127.0.0.1:8891, { unix:policyd/milter.sock, default_action=tempfail }"
        )
    assert "smtpd/pass/smtpd_milters" not in overrides  # port 25 (behind postscreen): none
    assert overrides["submission/inet/smtpd_reject_unlisted_recipient"] == "no"
    assert overrides["127.0.0.1:10025/inet/smtpd_milters"] == ""
    # the result is what config-check --postfix accepts, and a second run adds nothing
    r2 = check(cfg, etc)
    assert problems(r2) == [] and r2.returncode == 0, r2.stdout
    again = lines(cfg, etc)
    assert [ln for ln in again.stdout.splitlines() if ln.startswith("postconf ")] == []
    # the admin sees what each command does
    assert all(
        ln.startswith(("#", "postconf ", "install ", "postfix ")) for ln in r.stdout.splitlines()
    )


def _milters_after_lines(tmp_path: Path, main: str, extra: str = "") -> tuple[str, dict[str, str]]:
    """main.cf's smtpd_milters and the services' (expanded) after postfix-lines' commands."""
    etc = write_postfix(tmp_path, main, EXISTING_MASTER)
    cfg = write_policyd(tmp_path, extra)
    r = lines(cfg, etc)
    assert r.returncode == 0, r.stderr
    apply(etc, r.stdout)
    again = lines(cfg, etc)  # idempotent
    assert [ln for ln in again.stdout.splitlines() if ln.startswith("postconf ")] == []
    overrides = assignments(postconf(etc, "-P"))
    per_service = {
        k.removesuffix("/smtpd_milters"): postconf(etc, "-xh", v[1:]).strip()
        if v.startswith("$")
        else v
        for k, v in overrides.items()
        if k.endswith("/smtpd_milters")
    }
    return assignments(postconf(etc, "-n")).get("smtpd_milters", ""), per_service


OURS = "{ unix:policyd/milter.sock, default_action=tempfail }"


def test_postfix_lines_milter_everywhere_with_protect_local_senders(tmp_path: Path) -> None:
    """The milter's profile checks mail without a login too: appended to main.cf's list, after
    opendkim; services with their own list get it there (the re-injection's empty one not)."""
    main, services = _milters_after_lines(
        tmp_path, EXISTING_MAIN, "[profiles.submission]\nprotect_local_senders = true\n"
    )
    assert main == f"inet:127.0.0.1:8891, {OURS}"
    assert services == {"127.0.0.1:10025/inet": ""}


def test_postfix_lines_milter_everywhere_when_port_25_takes_logins(tmp_path: Path) -> None:
    main, services = _milters_after_lines(
        tmp_path,
        EXISTING_MAIN.replace("smtpd_sasl_auth_enable = no", "smtpd_sasl_auth_enable = yes"),
    )
    assert main == f"inet:127.0.0.1:8891, {OURS}"
    assert services == {"127.0.0.1:10025/inet": ""}


def test_postfix_lines_milter_on_submission_beside_the_admins_milters(tmp_path: Path) -> None:
    """protect_local_senders off, no AUTH on 25: only the submission services get the milter,
    each after the admin's own milters (main.cf's copied, or the service's own -o list)."""
    master = EXISTING_MASTER.replace(
        "  -o smtpd_tls_wrappermode=yes\n",
        "  -o smtpd_tls_wrappermode=yes\n  -o smtpd_milters=inet:127.0.0.1:8892\n",
    )
    etc = write_postfix(tmp_path, EXISTING_MAIN, master)
    cfg = write_policyd(tmp_path)
    r = lines(cfg, etc)
    assert r.returncode == 0, r.stderr
    apply(etc, r.stdout)
    assert assignments(postconf(etc, "-n"))["smtpd_milters"] == "inet:127.0.0.1:8891"
    overrides = assignments(postconf(etc, "-P"))
    sub = overrides["submission/inet/smtpd_milters"]
    assert postconf(etc, "-xh", sub[1:]).strip() == f"inet:127.0.0.1:8891, {OURS}"
    subs = overrides["submissions/inet/smtpd_milters"]
    assert postconf(etc, "-xh", subs[1:]).strip() == f"inet:127.0.0.1:8892, {OURS}"
    assert overrides["127.0.0.1:10025/inet/smtpd_milters"] == ""
    assert "smtpd/pass/smtpd_milters" not in overrides
    assert problems(check(cfg, etc)) == []


def test_postfix_lines_milter_without_any_milter_before(tmp_path: Path) -> None:
    main, services = _milters_after_lines(
        tmp_path, EXISTING_MAIN.replace("smtpd_milters = inet:127.0.0.1:8891\n", "")
    )
    assert main == ""
    assert services == {
        "submission/inet": OURS,
        "submissions/inet": OURS,
        "127.0.0.1:10025/inet": "",
    }


def test_postfix_lines_relay_on_25_inserts_before_reject_unauth_destination(
    tmp_path: Path,
) -> None:
    etc = write_postfix(tmp_path, EXISTING_MAIN, EXISTING_MASTER)
    cfg = write_policyd(tmp_path)
    r = lines(cfg, etc, "--relay-on-25")
    assert r.returncode == 0, r.stderr
    apply(etc, r.stdout)
    overrides = assignments(postconf(etc, "-P"))
    name = overrides["smtpd/pass/smtpd_relay_restrictions"]
    relay = postconf(etc, "-xh", name[1:]).strip()
    assert relay.startswith("permit_mynetworks, permit_sasl_authenticated, check_policy_service {")
    assert relay.endswith("}, defer_unauth_destination")
    assert "policy_context=mx" in relay
    # main.cf's relay list is untouched
    assert postconf(etc, "-h", "smtpd_relay_restrictions").strip() == (
        "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"
    )
    # the recipient list's reject_unauth_destination would refuse the relayed mail: policyd
    # comes before it there (once), the rest of the list as it was
    rcpt = postconf(etc, "-h", "smtpd_recipient_restrictions").strip()
    assert rcpt.startswith("permit_mynetworks, check_policy_service {"), rcpt
    assert rcpt.count("check_policy_service") == 1
    assert " ".join(rcpt.split()).endswith(
        "}, reject_unauth_destination, check_client_access cidr:/etc/postfix/access.cidr, "
        "reject_rbl_client rbl.example, permit"
    ), rcpt
    # run again: nothing more to add
    again = lines(cfg, etc, "--relay-on-25")
    assert again.returncode == 0, again.stderr
    assert [ln for ln in again.stdout.splitlines() if ln.startswith("postconf ")] == []


def test_relay_on_25_after_the_plain_integration_moves_policyd_before_the_reject(
    tmp_path: Path,
) -> None:
    etc = write_postfix(tmp_path, EXISTING_MAIN, EXISTING_MASTER)
    cfg = write_policyd(tmp_path)
    apply(etc, lines(cfg, etc).stdout)
    rcpt = postconf(etc, "-h", "smtpd_recipient_restrictions")
    assert rcpt.index("reject_unauth_destination") < rcpt.index("check_policy_service")
    apply(etc, lines(cfg, etc, "--relay-on-25").stdout)
    rcpt = postconf(etc, "-h", "smtpd_recipient_restrictions")
    assert rcpt.count("check_policy_service") == 1
    assert rcpt.index("check_policy_service") < rcpt.index("reject_unauth_destination")
    assert rcpt.rstrip().endswith("reject_rbl_client rbl.example, permit")
    assert problems(check(cfg, etc)) == []


def test_postfix_lines_without_postscreen_uses_the_smtp_service(tmp_path: Path) -> None:
    master = EXISTING_MASTER.replace(
        "smtp      inet  n       -       y       -       1       postscreen\n"
        "smtpd     pass  -       -       y       -       -       smtpd\n",
        "smtp      inet  n       -       n       -       -       smtpd\n"
        "  -o smtpd_recipient_restrictions=reject_unauth_destination,reject_rbl_client,x.example\n",
    )
    etc = write_postfix(tmp_path, EXISTING_MAIN, master)
    cfg = write_policyd(tmp_path)
    r = lines(cfg, etc)
    assert r.returncode == 0, r.stderr
    apply(etc, r.stdout)
    overrides = assignments(postconf(etc, "-P"))
    value = postconf(etc, "-xh", overrides["smtp/inet/smtpd_recipient_restrictions"][1:]).strip()
    assert value.startswith("reject_unauth_destination, check_policy_service {")
    assert value.endswith("},reject_rbl_client,x.example")
    # the service had its own list: main.cf's is left alone
    assert "check_policy_service" not in postconf(etc, "-h", "smtpd_recipient_restrictions")


def test_postfix_lines_refuses_a_socket_a_chrooted_smtpd_cannot_reach(tmp_path: Path) -> None:
    etc = write_postfix(tmp_path, EXISTING_MAIN, EXISTING_MASTER)
    cfg = tmp_path / "p.toml"
    (tmp_path / "senders.txt").write_text("")
    cfg.write_text('[milter]\nlisten = "unix:/run/policyd-milter/milter.sock"\n')
    r = lines(cfg, etc)
    assert r.returncode == 1
    assert "the milter socket /run/policyd-milter/milter.sock is outside /var/spool/postfix" in (
        r.stderr
    )
    assert '[milter] listen = "unix:/var/spool/postfix/policyd/milter.sock"' in r.stderr
    assert r.stdout == ""


def test_postfix_lines_will_not_guess_inside_a_parameter(tmp_path: Path) -> None:
    """reject_unauth_destination inside a $parameter: policyd's place is in there, which
    postfix-lines does not rewrite; it says so instead of putting policyd before it."""
    main = EXISTING_MAIN.replace(
        "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination,",
        "site_rcpt = permit_mynetworks, reject_unauth_destination\n"
        "smtpd_recipient_restrictions = $site_rcpt,",
    )
    etc = write_postfix(tmp_path, main, EXISTING_MASTER)
    r = lines(write_policyd(tmp_path), etc)
    assert r.returncode == 1 and r.stdout == ""
    assert "takes reject_unauth_destination from $site_rcpt" in r.stderr


# ---------------------------------------------------------------------------------------------
# config-check --postfix: one test per mistake


def _integrated(tmp_path: Path, extra: str = "", *, clean: bool = True) -> tuple[Path, Path]:
    etc = write_postfix(tmp_path, EXISTING_MAIN, EXISTING_MASTER)
    cfg = write_policyd(tmp_path, extra)
    apply(etc, lines(cfg, etc).stdout)
    if clean:
        assert problems(check(cfg, etc)) == []
    return etc, cfg


def _one_problem(cfg: Path, etc: Path, *needles: str) -> str:
    r = check(cfg, etc)
    found = problems(r)
    assert r.returncode == 1, r.stdout
    assert len(found) == 1, found
    for needle in needles:
        assert needle in found[0], found[0]
    return found[0]


def test_check_context_with_no_profile(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    rcpt = postconf(etc, "-h", "smtpd_recipient_restrictions").strip()
    postconf(etc, "-e", f"smtpd_recipient_restrictions = {rcpt.replace('=mx,', '=inbound,')}")
    _one_problem(cfg, etc, "policy_context=inbound names no policyd profile", "Fix:")


def test_check_policy_service_where_it_cannot_see_the_login(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    block = (
        "check_policy_service { inet:127.0.0.1:10040, policy_context=submission, "
        "{ default_action = 451 4.3.5 x }, timeout=10s }"
    )
    postconf(etc, "-e", f"policyd_early = {block}")
    postconf(etc, "-P", "submission/inet/smtpd_client_restrictions=$policyd_early")
    postconf(etc, "-P", "submission/inet/smtpd_delay_reject=no")
    _one_problem(cfg, etc, "submission/inet smtpd_client_restrictions", "runs before AUTH")


def test_check_submission_policy_on_a_service_without_auth(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    rcpt = postconf(etc, "-h", "smtpd_recipient_restrictions").strip()
    postconf(etc, "-e", f"smtpd_recipient_restrictions = {rcpt.replace('=mx,', '=submission,')}")
    line = _one_problem(cfg, etc, "smtpd/pass", "without SMTP AUTH", "policy_context=mx")
    assert "main.cf smtpd_recipient_restrictions" in line


def test_check_milter_without_default_action(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    postconf(etc, "-e", "smtpd_milters = inet:127.0.0.1:8891, unix:policyd/milter.sock")
    _one_problem(
        cfg,
        etc,
        "no default_action of its own",
        "milter_default_action = accept applies (it lets mail through unchecked)",
        "default_action=tempfail",
    )


def test_check_milter_with_a_permitting_default_action(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    postconf(
        etc,
        "-e",
        "smtpd_milters = inet:127.0.0.1:8891, { unix:policyd/milter.sock, default_action=accept }",
    )
    _one_problem(cfg, etc, "default_action=accept", "Fix: default_action=tempfail")


def test_check_milter_missing_where_logins_happen(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    postconf(etc, "-P", "submissions/inet/smtpd_milters=inet:127.0.0.1:8891")
    _one_problem(cfg, etc, "submissions/inet: clients log in here", "is not in its smtpd_milters")


def test_check_socket_unreachable_from_the_chroot(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    rcpt = postconf(etc, "-h", "smtpd_recipient_restrictions").strip()
    postconf(
        etc,
        "-e",
        "smtpd_recipient_restrictions = "
        + rcpt.replace("inet:127.0.0.1:10040", "unix:/run/policyd/policy.sock"),
    )
    line = _one_problem(cfg, etc, "unix:/run/policyd/policy.sock is not reachable", "chroot")
    assert "inet:127.0.0.1:10040" in line


def test_check_submission_without_auth(tmp_path: Path) -> None:
    etc, cfg = _integrated(tmp_path)
    postconf(etc, "-P", "submissions/inet/smtpd_sasl_auth_enable=no")
    r = check(cfg, etc)
    found = problems(r)
    assert any(
        "submissions/inet: port submissions without SMTP AUTH" in f
        and "smtpd_sasl_auth_enable=yes" in f
        for f in found
    ), found
    # (its submission policy then also cannot see a login: said too)
    assert r.returncode == 1


def test_check_confirm_relay_open_to_other_senders(tmp_path: Path) -> None:
    verification = (
        '[directory]\nfile = "senders.txt"\n'
        "[verification]\nenabled = true\n"
        f'database = "{tmp_path}/v.sqlite"\nlocal_domains = ["example.org"]\n'
        "[verification.mail]\nsmtp_port = 10026\n"
    )
    etc, cfg = _integrated(tmp_path, verification, clean=False)
    # no service there yet
    _one_problem(cfg, etc, "smtp_port = 10026: no smtpd service")
    # one on every address, relaying for mynetworks
    with (etc / "master.cf").open("a") as f:
        f.write(
            "10026 inet n - n - - smtpd\n  -o smtpd_relay_restrictions=permit_mynetworks,reject\n"
        )
    _one_problem(cfg, etc, "10026/inet", "open to other senders", "127.0.0.1")
    # the documented one (conf/postfix/senders-confirm.cf's shape) passes
    text = (
        (etc / "master.cf")
        .read_text()
        .replace(
            "10026 inet n - n - - smtpd\n",
            "127.0.0.1:10026 inet n - n - - smtpd\n  -o mynetworks=127.0.0.0/8\n",
        )
    )
    (etc / "master.cf").write_text(text)
    assert problems(check(cfg, etc)) == []


def test_check_confirm_relay_on_the_content_filters_port(tmp_path: Path) -> None:
    verification = (
        '[directory]\nfile = "senders.txt"\n'
        "[verification]\nenabled = true\n"
        f'database = "{tmp_path}/v.sqlite"\nlocal_domains = ["example.org"]\n'
        "[verification.mail]\nsmtp_port = 10025\n"
    )
    etc, cfg = _integrated(tmp_path, verification, clean=False)
    _one_problem(cfg, etc, "127.0.0.1:10025/inet", "content filter's re-injection service")


def test_check_before_integration_names_what_is_missing(tmp_path: Path) -> None:
    """The existing server as it was: the milter is missing where logins happen."""
    etc = write_postfix(tmp_path, EXISTING_MAIN, EXISTING_MASTER)
    cfg = write_policyd(tmp_path)
    found = problems(check(cfg, etc))
    assert any("submission/inet: clients log in here" in f for f in found), found
    assert any("submissions/inet: clients log in here" in f for f in found), found
    assert any("smtpd/pass: policyd is not asked here" in f for f in found), found
    assert any("submission/inet: policyd is not asked here" in f for f in found), found
