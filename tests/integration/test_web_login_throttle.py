"""The login throttle holds (issue 23, section 3), over HTTP against `policyd web` and a real
slapd: parallel attempts, the directory's own login as the key, a proxy nobody trusted, and an
unknown login's decoy bind costing what a real one costs.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.slapd import DIRECTORY_LDIF, REPO, Slapd, binary, free_port
from tests.servers.web import Client, Reply, WebServer, ldap_web_servers

pytest.importorskip("aiohttp")

pytestmark = pytest.mark.slapd

Start = Callable[..., WebServer]


@pytest.fixture
def start(slapd: Slapd, tmp_path: Path) -> Iterator[Start]:
    with ldap_web_servers(slapd, tmp_path) as go:
        yield go


def login(c: Client, user: str, password: str, headers: dict[str, str] | None = None) -> Reply:
    token = c.get("/login").form_value("csrf")
    return c.post("/login", {"csrf": token, "user": user, "password": password}, headers=headers)


def test_parallel_wrong_passwords_reach_the_directory_at_most_the_limit(
    start: Start, slapd: Slapd
) -> None:
    w = start("login_max_failures_per_login = 5\nlogin_max_failures_per_ip = 1000\nthreads = 8\n")
    clients = [Client(w.url) for _ in range(50)]
    tokens = [c.get("/login").form_value("csrf") for c in clients]
    before = slapd.operations("Bind")
    go = threading.Barrier(len(clients))
    statuses: list[int] = []
    lock = threading.Lock()

    def attempt(c: Client, token: str) -> None:
        go.wait()
        r = c.post("/login", {"csrf": token, "user": "alice", "password": "wrong"})
        with lock:
            statuses.append(r.status)

    threads = [
        threading.Thread(target=attempt, args=ct) for ct in zip(clients, tokens, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    binds = slapd.operations("Bind") - before
    assert sorted(set(statuses)) == [401, 429] and statuses.count(401) == 5
    # each attempt that got through: the service account's bind (to find the entry) and alice's
    assert binds <= 2 * 5, f"{binds} binds reached slapd for a limit of 5"
    # and with the right password too, now
    assert login(Client(w.url), "alice", "alice-pw").status == 429


def test_the_session_and_the_throttle_use_the_directorys_login(start: Start) -> None:
    w = start(
        "login_max_failures_per_login = 3\nlogin_max_failures_per_ip = 1000\n",
        ldap='user_filter = "(&(objectClass=inetOrgPerson)(|(uid={login})(mail={login})))"\n',
    )
    # typed as her mail address: the session is the entry's login, not the typed string
    c = Client(w.url)
    assert login(c, "alice@example.org", "alice-pw").status == 303
    page = c.get("/addresses")
    assert "Logged in as <strong>alice</strong>" in page.text
    # bob's entry says uid "Bob": the session login is its canonical form
    c = Client(w.url)
    assert login(c, "BOB", "bob-pw").status == 303
    assert "Logged in as <strong>bob</strong>" in c.get("/addresses").text
    # carol's failures under her uid count for her mail address as well: one bucket
    for _ in range(3):
        assert login(Client(w.url), "carol", "wrong").status == 401
    r = login(Client(w.url), "carol@example.org", "carol-pw")
    assert r.status == 429


def test_a_login_that_folding_changes_gets_no_bucket_and_no_session_of_its_own(
    start: Start, slapd: Slapd
) -> None:
    w = start("login_max_failures_per_login = 3\nlogin_max_failures_per_ip = 1000\n")
    # slapd's caseIgnoreMatch finds alice's and bob's entries for these ...
    for typed, password in (("ＡＬＩＣＥ", "alice-pw"), ("ｂｏｂ", "bob-pw")):
        c = Client(w.url)
        before = slapd.operations("Bind")
        r = login(c, typed, password)
        # ... but the password is not even tried against them: no session, the usual answer
        assert r.status == 401 and "Wrong login or password." in r.text
        assert "policyd-session" not in c.cookies
        assert slapd.operations("Bind") - before == 2  # the service account's, and the decoy
    # one bucket for every spelling: "ｂｏｂ"'s failure counted for bob, two more fill it ...
    for _ in range(2):
        assert login(Client(w.url), "bob", "wrong").status == 401
    assert login(Client(w.url), "bob", "bob-pw").status == 429
    # ... and the fullwidth spelling is no way around it
    assert login(Client(w.url), "ＢＯＢ", "bob-pw").status == 429


def test_a_loopback_proxy_that_nobody_trusts_gets_no_logins_and_a_loud_log(
    start: Start,
) -> None:
    w = start("login_max_failures_per_ip = 2\nlogin_max_failures_per_login = 100\n")
    assert "web.trusted_proxies is empty" in w.log_text()  # said at start
    fwd = {"X-Forwarded-For": "198.51.100.23"}
    for _ in range(3):
        r = login(Client(w.url), "nobody", "bad", headers=fwd)
        assert r.status == 503 and "not possible right now" in r.text
    log = w.log_text()
    assert "forwards clients (X-Forwarded-For) but web.trusted_proxies is empty" in log
    assert log.count("forwards clients (X-Forwarded-For)") == 1  # not once per request
    # nothing was counted: a direct client (no proxy) still logs in
    assert login(Client(w.url), "alice", "alice-pw").status == 303


def test_behind_the_readmes_proxy_one_clients_failures_lock_out_no_one_else(
    start: Start,
) -> None:
    readme = (REPO / "README.md").read_text()
    nginx = readme[readme.index("```nginx") :]
    nginx = nginx[: nginx.index("```\n", 8)]
    assert "X-Forwarded-For $remote_addr" in nginx
    assert 'web.trusted_proxies = ["127.0.0.1"]' in nginx.replace("# ", "")
    w = start('trusted_proxies = ["127.0.0.1"]\n')  # the defaults: 20 per address, 5 per login
    attacker = {"X-Forwarded-For": "203.0.113.66"}
    for i in range(20):
        assert login(Client(w.url), f"guess{i}", "bad", headers=attacker).status == 401
    assert login(Client(w.url), "alice", "alice-pw", headers=attacker).status == 429
    # another client's login, with none of its own failures, is not locked out
    other = {"X-Forwarded-For": "203.0.113.7"}
    assert login(Client(w.url), "alice", "alice-pw", headers=other).status == 303


def test_a_directory_that_does_not_answer_counts_no_failure(start: Start) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    w = start("login_max_failures_per_login = 2\nlogin_max_failures_per_ip = 2\n", server=dead)
    for _ in range(4):
        r = login(Client(w.url), "alice", "alice-pw")
        assert r.status == 503 and "not possible right now" in r.text


# -- the decoy bind ----------------------------------------------------------------------------

SLOW_ROUNDS = 300000


def _slow_hash(password: str) -> str:
    import subprocess

    out = subprocess.run(
        [
            binary("slappasswd"),
            "-h",
            "{CRYPT}",
            "-c",
            f"$6$rounds={SLOW_ROUNDS}$%.16s",
            "-s",
            password,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert out.startswith("{CRYPT}$6$"), out
    return out


def _slow_directory() -> bytes:
    """The test directory plus a user and a decoy whose passwords are hashed slowly (SHA-512
    crypt, many rounds): a bind that checks a hash takes visibly longer than one that does not."""
    extra = (
        "\n\ndn: uid=slow,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\n"
        "uid: slow\ncn: Slow\nsn: Slow\nmail: slow@example.org\n"
        f"userPassword: {_slow_hash('slow-pw')}\n"
        "\ndn: cn=policyd-web-decoy,ou=services,dc=example,dc=org\n"
        "objectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: policyd-web-decoy\nuserPassword: {_slow_hash('nobody-knows-this')}\n"
    )
    return DIRECTORY_LDIF.read_bytes() + extra.encode()


def _median_seconds(w: WebServer, user: str, n: int) -> float:
    times = []
    for _ in range(n):
        c = Client(w.url)
        token = c.get("/login").form_value("csrf")
        t0 = time.perf_counter()
        r = c.post("/login", {"csrf": token, "user": user, "password": "wrong"})
        times.append(time.perf_counter() - t0)
        assert r.status == 401
    return statistics.median(times)


@pytest.mark.parametrize(
    "decoy",
    ['login_decoy_dn = "cn=policyd-web-decoy,ou=services,dc=example,dc=org"\n', ""],
    ids=["decoy-dn", "default-no-decoy-dn"],
)
def test_an_unknown_logins_decoy_bind_costs_what_a_real_bind_costs(
    start: Start, slapd_factory: Any, decoy: str
) -> None:
    """With web.login_decoy_dn the directory hashes the unknown login's password; without it
    (the default) policyd holds the answer for as long as recent real binds took."""
    slow = slapd_factory(tls=False, ldif=None, _ldif_text=_slow_directory())
    w = start(
        "login_max_failures_per_ip = 1000\nlogin_max_failures_per_login = 1000\n" + decoy,
        using=slow,
    )
    _median_seconds(w, "slow", 1)  # warm up (connections, imports)
    known, unknown = [], []
    for _ in range(3):  # interleaved: the same load for both
        known.append(_median_seconds(w, "slow", 3))
        unknown.append(_median_seconds(w, "no-such-user", 3))
    k, u = statistics.median(known), statistics.median(unknown)
    print(
        f"{decoy.strip() or 'no decoy DN'}: known login, wrong password {k * 1000:.0f} ms; "
        f"unknown {u * 1000:.0f} ms"
    )
    assert k > 0.05  # the slow hash is there: the comparison below means something
    assert abs(k - u) < 0.5 * k, (k, u)  # (before the fix: unknown took ~4% of known)
