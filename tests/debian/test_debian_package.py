"""The .deb installed on a booted Debian 13 under a real systemd (PID 1 of the container).

One container for the module; the tests run in file order and build on each other (install,
socket activation, reload, restart, watchdog, hardening, journal, Postfix, purge), as an admin
would go through them. Numbers in the names are the items of issue 15. Inside the container
there is only loopback (--private-network); Postfix delivers nothing (every transport is
discard:).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

from tests.debian.container import REPO, Container

pytestmark = [pytest.mark.debian, pytest.mark.timeout(900)]

TCP = "127.0.0.1:10040"
UNIX = "unix:/run/policyd/policy.sock"
DENY = (
    "554 5.7.1 Relay access denied: 192.0.2.7 is not in our network; "
    "enable SMTP authentication in your mail client"
)
#: `systemd-analyze security policyd.service` on trixie's systemd 257, as documented in the
#: README ("Install", "What the units do"): anything above it fails.
MAX_EXPOSURE = 1.3


def ask(c: Container, addr: str = TCP, **attrs: str) -> str:
    args = " ".join(f"'{k}={v}'" for k, v in attrs.items())
    return c.run(f"python3 /out/client.py ask {addr} {args}", timeout=30).stdout.strip()


def active(c: Container, *units: str) -> list[str]:
    return c.run(f"systemctl is-active {' '.join(units)}", check=False).stdout.split()


def main_pid(c: Container, unit: str = "policyd.service") -> int:
    return int(c.run(f"systemctl show -p MainPID --value {unit}").stdout.strip())


def wait_for(pred, timeout: float, step: float = 0.25) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


# 1 ------------------------------------------------------------------------------------------


def test_1_apt_install_resolves_debians_libraries_and_starts_socket_and_service(
    trixie: Container,
) -> None:
    c = trixie
    debs = " ".join(f"./{p.name}" for p in sorted(c.out.glob("policyd*.deb")))
    r = c.run(
        f"cd /out && DEBIAN_FRONTEND=noninteractive apt-get -q install -y {debs} "
        "postfix sasl2-bin libsasl2-modules",
        timeout=300,
    )
    assert "Setting up policyd " in r.stdout
    for dep in ("python3-netaddr", "python3-ldap3", "python3-idna", "python3-milter"):
        assert f"Setting up {dep} " in r.stdout, dep
    # the user from sysusers.d, units enabled and running, the socket first
    assert c.run("getent passwd policyd").stdout.split(":")[5] == "/var/lib/policyd"
    assert (
        c.run(
            "systemctl is-enabled policyd.socket policyd.service policyd-milter.service"
        ).stdout.split()
        == ["enabled"] * 3
    )
    assert active(c, "policyd.socket", "policyd.service") == ["active", "active"]
    assert c.run("test -S /run/policyd/policy.sock && echo yes").stdout.strip() == "yes"
    # the conffiles, safe as installed: nothing relays
    conffiles = c.run("dpkg-query -W -f='${Conffiles}' policyd").stdout
    for f in ("policyd.toml", "ranges.txt", "senders.txt"):
        assert f"/etc/policyd/{f}" in conffiles
    check = c.run("policyd config-check -c /etc/policyd/policyd.toml").stdout
    assert "ranges: 0 ranges" in check and ": 0 logins, 0 addresses" in check, check
    assert ask(c) == DENY
    assert c.run("test -f /usr/share/doc/policyd/examples/ranges.txt && echo y").stdout == "y\n"
    # the man pages are installed
    for page in ("man8/policyd.8.gz", "man5/policyd.toml.5.gz"):
        c.run(f"test -s /usr/share/man/{page}")


def test_1_unit_tests_pass_on_debians_python_against_the_installed_package(
    trixie: Container,
) -> None:
    c = trixie
    where = c.run("cd /out/src && python3 -c 'import policyd; print(policyd.__file__)'").stdout
    assert where.strip() == "/usr/lib/python3/dist-packages/policyd/__init__.py"
    # the same tests against both builds the package holds: its compiled modules, and the
    # pure ones it falls back to
    for env in ("POLICYD_EXPECT_COMPILED=1", "POLICYD_PURE=1"):
        r = c.run(
            f"cd /out/src && {env} python3 -m pytest -q -p no:cacheprovider tests/unit 2>&1"
            " | tail -3",
            timeout=300,
        )
        assert re.search(r"\d+ passed", r.stdout) and "failed" not in r.stdout, (env, r.stdout)


def test_1_the_installed_policyd_is_the_compiled_build(trixie: Container) -> None:
    from policyd.build import COMPILED_MODULES

    out = trixie.run("policyd --version").stdout.strip()
    assert out == f"policyd 0.1.0 (compiled with mypyc: {len(COMPILED_MODULES)} modules)", out
    # Debian's python3 loads the extension modules the package built
    so = trixie.run("ls /usr/lib/python3/dist-packages/policyd/core/").stdout
    assert ".cpython-313-" in so, so


# 2 ------------------------------------------------------------------------------------------


def test_2_a_connection_to_the_socket_starts_the_stopped_service_and_is_answered(
    trixie: Container,
) -> None:
    c = trixie
    for addr in (UNIX, TCP):
        c.run("systemctl stop policyd.service")
        assert active(c, "policyd.socket", "policyd.service") == ["active", "inactive"]
        # the socket unit's unix socket survives the stop (Python 3.13: cleanup_socket)
        c.run("test -S /run/policyd/policy.sock")
        assert ask(c, addr) == DENY
        assert active(c, "policyd.socket", "policyd.service") == ["active", "active"]
    assert "socket activation: serving 2 passed socket(s)" in c.journal("policyd.service")


# 3 ------------------------------------------------------------------------------------------


def test_3_reload_keeps_a_busy_connection_and_a_broken_config_keeps_the_old_one(
    trixie: Container,
) -> None:
    c = trixie
    pid = main_pid(c)
    c.run(f"python3 /out/client.py busy {TCP} 7 > /out/busy.json 2>&1 &")
    time.sleep(1.5)
    c.run("echo '192.0.2.0/24 customers' >> /etc/policyd/ranges.txt")
    t0 = time.monotonic()
    c.run("systemctl reload policyd")  # Type=notify-reload: returns once policyd is READY
    reload_s = time.monotonic() - t0
    time.sleep(1.5)
    c.run("cp /etc/policyd/ranges.txt /out/ranges.good")
    c.run("echo '192.0.2.300 broken' >> /etc/policyd/ranges.txt")
    c.run("systemctl reload policyd")
    assert wait_for(lambda: (c.out / "busy.json").read_text().strip().endswith("]"), 15)
    answers = [a for _, a in json.loads((c.out / "busy.json").read_text())]
    assert not [a for a in answers if a.startswith("ERROR")], answers[-3:]
    assert len(answers) > 100
    # one connection throughout: 554 before the reload, OK after it, and still OK after the
    # broken reload (old config kept)
    first_ok = answers.index("OK")
    assert set(answers[:first_ok]) == {DENY} and set(answers[first_ok:]) == {"OK"}
    assert first_ok > 10 and len(answers) - first_ok > 100
    assert main_pid(c) == pid and active(c, "policyd.service") == ["active"]
    log = c.journal("policyd.service")
    assert re.search(r"reload failed, keeping the running config: .*ranges\.txt.*:\s*\S", log), log
    assert "192.0.2.300" in log
    assert reload_s < 10
    c.run("cp /out/ranges.good /etc/policyd/ranges.txt && systemctl reload policyd")


# 4 ------------------------------------------------------------------------------------------


def test_4_restart_under_load_loses_no_request(trixie: Container) -> None:
    c = trixie
    pid = main_pid(c)
    c.run(
        f"python3 /out/client.py burst {TCP} 5 4 > /out/burst-tcp.json 2>&1 & "
        f"python3 /out/client.py burst {UNIX} 5 2 > /out/burst-unix.json 2>&1 &"
    )
    time.sleep(1.5)
    c.run("systemctl restart policyd")
    for name in ("burst-tcp.json", "burst-unix.json"):
        f = c.out / name
        assert wait_for(lambda f=f: f.read_text().strip().endswith("}"), 20), name
        counts = json.loads(f.read_text())
        # every request answered: none refused, reset or timed out (a connection closed
        # cleanly before its reply is retried, as Postfix retries it)
        assert counts["errors"] == [] and counts["answered"] == counts["sent"], counts
        assert counts["sent"] > 50 and counts["retried"] <= 8, counts
        print(f"restart under load, {name}: {counts}")
    assert main_pid(c) != pid
    c.run("test -S /run/policyd/policy.sock")  # still there after the restart


# 5 ------------------------------------------------------------------------------------------


def test_5_a_frozen_daemon_is_killed_and_restarted_by_the_watchdog(trixie: Container) -> None:
    c = trixie
    watchdog_s = _usec(c, "WatchdogUSec")  # the shipped WatchdogSec=30s
    assert 0 < watchdog_s <= 60
    restarts = int(c.run("systemctl show -p NRestarts --value policyd").stdout)
    pid = main_pid(c)
    c.run(f"python3 -c 'import os, signal; os.kill({pid}, signal.SIGSTOP)'")
    t0 = time.monotonic()
    assert wait_for(
        lambda: main_pid(c) not in (0, pid) and active(c, "policyd.service") == ["active"],
        watchdog_s + 20,
        step=1,
    ), c.run("systemctl status policyd --no-pager", check=False).stdout
    took = time.monotonic() - t0
    print(f"watchdog: restarted {took:.1f}s after SIGSTOP (WatchdogSec={watchdog_s:g}s)")
    assert took <= watchdog_s + 10
    assert int(c.run("systemctl show -p NRestarts --value policyd").stdout) == restarts + 1
    assert "Watchdog timeout" in c.run("journalctl -q --no-pager -u policyd").stdout
    assert ask(c) == "OK"  # ranges kept: 192.0.2.7 is allocated now


def _usec(c: Container, prop: str) -> float:
    r = c.run(f"systemctl show -p {prop} --value policyd").stdout.strip()
    m = re.fullmatch(r"(?:(\d+)min ?)?(?:(\d+(?:\.\d+)?)s)?", r)
    assert m, r
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)


# 6 ------------------------------------------------------------------------------------------


def test_6_runs_as_policyd_cannot_write_etc_or_home_and_exposure_is_documented(
    trixie: Container,
) -> None:
    c = trixie
    pid = main_pid(c)
    uid = c.run("id -u policyd").stdout.strip()
    status = c.run(f"cat /proc/{pid}/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert (
        fields["Uid"].split() == [uid] * 4
        and fields["Gid"].split()[0] == c.run("id -g policyd").stdout.strip()
    )
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    c.run("mkdir -p /home/someone && chmod 777 /home/someone")
    # inside the service's own mount namespace, as its user
    as_service = f"nsenter -t {pid} -m -S {uid} -G {uid} -- sh -c"
    for target in ("/etc/policyd/x", "/etc/x", "/home/someone/x", "/usr/lib/x"):
        r = c.run(f"{as_service} 'echo x > {target}'", check=False)
        assert r.returncode != 0, target
        assert re.search(r"Read-only file system|Permission denied|No such file", r.stderr), (
            r.stderr
        )
    # ... while its state directory is writable (so the probe itself works)
    c.run(f"{as_service} 'echo x > /var/lib/policyd/probe && rm /var/lib/policyd/probe'")
    r = c.run("systemd-analyze security --no-pager policyd.service", check=False)
    m = re.search(r"Overall exposure level for policyd\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:]
    print(f"systemd-analyze security policyd.service: {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout[-3000:]


# 7 ------------------------------------------------------------------------------------------


def test_7_one_decision_line_per_request_in_the_journal(trixie: Container) -> None:
    c = trixie
    tag = uuid.uuid4().hex[:10]
    for i in range(5):
        ask(c, sender=f"{tag}-{i}@example.com", client_address="198.51.100.9")

    def lines() -> list[str]:
        return [ln for ln in c.journal("policyd.service").splitlines() if tag in ln]

    assert wait_for(lambda: len(lines()) >= 5, 10)
    got = lines()
    assert len(got) == 5, got
    for i, ln in enumerate(got):
        assert "decision " in ln and f"sender={tag}-{i}@example.com" in ln
        assert "reason=authentication_required" in ln and "client=198.51.100.9" in ln


# 8 ------------------------------------------------------------------------------------------

SMTP = r"""
import json, smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def rcpt(sender, login=None, port=587):
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.test"); s.starttls(context=ctx); s.ehlo("client.test")
    if login: s.login(login, "secret-alice")
    s.mail(sender); code, msg = s.rcpt("rcpt@example.net")
    out = [code, msg.decode()]
    if code == 250 and len(sys.argv) > 1:
        code, msg = s.data(("From: " + sys.argv[1] + "\r\nTo: rcpt@example.net\r\n"
                            "Subject: t\r\n\r\nhello\r\n").encode())
        out += [code, msg.decode()]
    s.quit()
    return out
print(json.dumps({
    "foreign": rcpt("bob@example.org", "alice"),
    "owned": rcpt("alice@example.org", "alice"),
    "outsider": rcpt("someone@example.com"),
}))
"""


def _postfix_as_in_readme(c: Container) -> None:
    """The README's main.cf and master.cf lines (conf/postfix/, which the README quotes: see
    tests/unit/test_docs.py) and the milter lines, pasted into the installed Postfix."""
    etc = c.root / "etc/postfix"
    main = (etc / "main.cf").read_text()
    main += "\n# --- pasted from the README ---\n"
    main += (REPO / "conf/postfix/main.cf").read_text()
    main += (REPO / "conf/postfix/milter.cf").read_text()
    # test-only: loopback, nothing delivered
    main += (
        "\nmyhostname = mail.test\ninet_interfaces = loopback-only\ninet_protocols = ipv4\n"
        "default_transport = discard:\nrelay_transport = discard:\nlocal_transport = discard:\n"
    )
    (etc / "main.cf").write_text(main)
    # master.cf: the shipped smtp and submission entries replace Debian's
    kept: list[str] = []
    skipping = False
    for line in (etc / "master.cf").read_text().splitlines():
        if re.match(r"#?(smtp|submission)\s+inet\s", line):
            skipping = True
            continue
        if skipping and re.match(r"#?\s+-o", line):
            continue
        skipping = False
        kept.append(line)
    (etc / "master.cf").write_text(
        "\n".join(kept) + "\n" + (REPO / "conf/postfix/master.cf").read_text()
    )
    (etc / "sasl").mkdir(exist_ok=True)
    (etc / "sasl/smtpd.conf").write_text(
        "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
        "sasldb_path: /etc/postfix/sasl/sasldb2\nmech_list: PLAIN LOGIN\n"
    )


def test_8_as_deployed_postfix_with_sasl_gets_553_250_554_and_the_milter_refuses(
    trixie: Container,
) -> None:
    c = trixie
    c.run("echo 'alice: alice@example.org' >> /etc/policyd/senders.txt && systemctl reload policyd")
    _postfix_as_in_readme(c)
    c.run(
        "echo secret-alice | saslpasswd2 -p -c -f /etc/postfix/sasl/sasldb2 -u mail.test alice"
        " && chown root:postfix /etc/postfix/sasl/sasldb2 && chmod 640 /etc/postfix/sasl/sasldb2"
        " && test -s /etc/ssl/certs/ssl-cert-snakeoil.pem"
        # the milter's socket is 0660 group policyd (README: adduser postfix policyd)
        " && usermod -aG policyd postfix && systemctl restart policyd-milter"
    )
    assert wait_for(
        lambda: c.run("test -S /run/policyd-milter/milter.sock", check=False).returncode == 0, 15
    )
    c.run("postfix check && systemctl restart postfix")
    assert wait_for(
        lambda: (
            c.run(
                "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 587), 2)'",
                check=False,
            ).returncode
            == 0
        ),
        20,
    )
    (c.out / "smtp.py").write_text(SMTP)
    got = json.loads(c.run("python3 /out/smtp.py", timeout=90).stdout)
    assert got["foreign"][0] == 553 and "not owned by user alice" in got["foreign"][1], got
    assert got["owned"][0] == 250, got
    assert got["outsider"][0] == 554 and "Relay access denied: 127.0.0.1" in got["outsider"][1], got
    # header From: of someone else after DATA: the milter refuses it
    milter = json.loads(c.run("python3 /out/smtp.py bob@example.org", timeout=90).stdout)
    assert milter["owned"][:1] == [250] and milter["owned"][2] == 550, milter
    assert "Header From <bob@example.org> is not owned by user alice" in milter["owned"][3]
    assert active(c, "policyd-milter.service") == ["active"]
    assert "reason=sender_not_owned" in c.journal("policyd.service")


# 9 ------------------------------------------------------------------------------------------


def test_9_apt_purge_leaves_no_unit_no_process_and_no_files(trixie: Container) -> None:
    c = trixie
    uid = int(c.run("id -u policyd").stdout)
    c.run("DEBIAN_FRONTEND=noninteractive apt-get -q purge -y policyd policyd-milter", timeout=120)
    units = c.run("systemctl list-unit-files --no-legend 'policyd*'", check=False).stdout
    assert units.strip() == "", units
    assert (
        active(c, "policyd.socket", "policyd.service", "policyd-milter.service") == ["inactive"] * 3
    )
    procs = c.run(
        "python3 -c \"import os; print(*[p for p in os.listdir('/proc') if p.isdigit()"
        f" and os.stat('/proc/' + p).st_uid == {uid}])\""
    ).stdout.split()
    assert procs == [], procs
    left = c.run(
        "find / -xdev \\( -path /out -o -path /.policyd-rootfs -o -path /proc -o -path /sys"
        " -o -path /var/log/journal \\)"
        " -prune -o -name '*policyd*' -print",
        check=False,
    ).stdout.split()
    assert left == [], left
    assert c.run(
        "dpkg -l 'policyd*' 2>/dev/null | grep -c '^[ip]i'", check=False
    ).stdout.strip() in ("", "0")
    # the system user stays, as for every Debian package (it may still own files elsewhere)
    assert c.run("getent passwd policyd", check=False).returncode == 0
    assert Path(c.root / "etc/postfix/main.cf").exists()  # (Postfix itself untouched)
