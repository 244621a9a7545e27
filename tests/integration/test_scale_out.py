"""Scale-out: two policyd instances over a replicated directory, under load, through failures.

The topology (tests/servers/scale_cluster.py, docs/scale-out.md): a syncprov provider and a
syncrepl consumer (refreshAndPersist over StartTLS, as a replication account, updateref to the
provider), two MTA hosts each running a real `policyd serve` with the LDAP backend — mta1 reads
the consumer first, mta2 the provider first — all in network namespaces made for this run and
joined by one veth pair per link. A cut is `ip link set DEV down` on the server's end of a link
(the client's packets vanish: connects and reads time out).

The load (tests/servers/ownership_load.py) runs for the whole module: 32 persistent connections
per instance, full Postfix requests, every answer checked against who owns what at that moment.
The tests below run in file order on the shared cluster; each leaves it healthy again, and
each checks its own time window; the last one prints the counts and asserts zero wrong answers
over the whole run.

Timers are short so events resolve in seconds: cache TTL 2 s, stale_if_error 120 s, LDAP
connect/receive timeouts 1 s, lookup deadline 2 s, and the failover timers of the LDAP backend
(30 s / 60 s in production) set to 2 s / 3 s by the launcher in tests/servers/policyd_proc.py.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from policyd.policy.protocol import encode_request
from tests.integration.serverutil import authed
from tests.servers import netns as netns_mod
from tests.servers.ownership_load import KNOWN, OwnershipLoad, Plan, Summary, Truth
from tests.servers.replication import (
    WRITER_DN,
    WRITER_PASSWORD,
    DirectoryData,
    add_value,
    alt_address,
    delete_value,
    login,
    own_address,
    user_dn,
)
from tests.servers.requirements import in_ci, require_binaries
from tests.servers.scale_cluster import CONSUMER, MTAS, PROVIDER, Cluster
from tests.servers.slapd import REQUIRED_BINARIES, binary

pytestmark = [
    pytest.mark.slapd,
    pytest.mark.netns,
    pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning"),
]

POSITIVE_TTL = 2.0
#: Replication lag (+ one lookup) a change may take beyond the cache TTL and still be "on
#: time": the window in which both the old and the new answer count as right.
LAG_ALLOWANCE = 1.0
WINDOW = POSITIVE_TTL + LAG_ALLOWANCE
RECEIVE_TIMEOUT = 1
LOOKUP_DEADLINE = 2.0
RATE = float(os.environ.get("SCALE_RATE", "400"))  # requests/s per instance, in all
CONNS = 32

USERS = 4200
STEADY = range(200)
DYN_ADD = (login(4190), "new1@example.org")  # not owned at first: added, then revoked
DYN_REVOKE = (login(4191), alt_address(4191))  # owned at first: revoked during a partition
# sender verification, "ldap" store (`policyd senders`): an address outside our domains
DYN_VERIFIED = (login(4196), "ext1@partner.example")  # senders add, then senders revoke
DYN_OUTAGE = (login(4197), "ext2@partner.example")  # senders add while the provider is down
MAIL_ATTR = "mailLocalAddress"
VERIFIED_ATTR = "policydSenderAddress"  # conf/ldap/policyd-senders.schema


@dataclass
class Scale:
    cluster: Cluster
    truth: Truth
    load: OwnershipLoad
    t_start: float
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    measured: dict[str, str] = field(default_factory=dict)

    def phase(self, name: str, t0: float, t1: float) -> None:
        self.phases.append((name, t0, t1))

    def summary(self, t0: float, t1: float, inst: str | None = None) -> Summary:
        return self.load.summary(t0, t1, inst)


def _require() -> None:
    require_binaries(
        *(binary(n) for n in (*REQUIRED_BINARIES, "ldapmodify", "ip", "ss")),
        why="the scale-out tier needs slapd, ldap-utils and iproute2",
    )
    why = netns_mod.available()
    if why:
        msg = f"the scale-out tier needs network namespaces: {why}"
        if in_ci():
            pytest.fail(msg + " [CI=true: a missing tier is a failure]")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    _require()
    base = tmp_path_factory.mktemp("scale")
    cluster = Cluster.build(
        base,
        DirectoryData(users=USERS),
        positive_ttl=POSITIVE_TTL,
        negative_ttl=POSITIVE_TTL,
        stale_if_error=120.0,
        lookup_deadline=LOOKUP_DEADLINE,
        timeout=RECEIVE_TIMEOUT,
        user_attributes=("mail", MAIL_ATTR, VERIFIED_ATTR),
    )
    try:
        truth = Truth({DYN_ADD: False, DYN_REVOKE: True, DYN_VERIFIED: False, DYN_OUTAGE: False})
        plan = Plan(
            steady=STEADY,
            cold={"mta1": range(200, 4190, 2), "mta2": range(201, 4190, 2)},
            dynamic=[DYN_ADD, DYN_REVOKE, DYN_VERIFIED, DYN_OUTAGE],
            mix={"owned": 36, "tagged": 10, "foreign": 13, "dynamic": 16, "cold": 5, "unauth": 20},
        )
        load = OwnershipLoad(
            {m: p.socket for m, p in cluster.mta.items()}, truth, plan, rate=RATE, conns=CONNS
        )
        # every login the load calls "known" is looked up once on every instance first
        for m, p in cluster.mta.items():
            for i in STEADY:
                assert ask(p.socket, login(i), own_address(i)).startswith("OK"), (m, i)
            for pair, owned in truth.initial.items():
                assert ask(p.socket, *pair).startswith("OK" if owned else "553 "), (m, pair)
        load.start(max_seconds=240)  # bounded even if a test hangs
        s = Scale(cluster, truth, load, time.monotonic())
        time.sleep(2.0)  # connections, a first round of refreshes
        s.phase("warm-up", s.t_start, time.monotonic())
        yield s
    finally:
        if "load" in locals():
            load.stop()
        cluster.close()
    leftovers = cluster.net.leftovers()
    assert leftovers == [], f"namespaces left behind: {leftovers}"
    assert not Path(cluster.dir).exists()


def poll(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
    """Seconds until cond() held (None if it never did within timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def ask(sock: str, login_: str, sender: str, timeout: float = 5.0) -> str:
    """One request on its own connection (outside the load), the action returned."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall(encode_request(authed(login_, sender, server_port="587")))
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().removeprefix("action=").strip()


def _no_wrong(s: Scale, t0: float, t1: float) -> dict[str, Summary]:
    out = {}
    for m in MTAS:
        sm = s.summary(t0, t1, m)
        assert sm.wrong == 0, f"{m}: {sm.line()}\n" + "\n".join(sm.wrong_examples)
        assert sm.errors == 0, f"{m}: transport errors {s.load.transport_errors[:5]}"
        assert sm.requests > 0, f"{m}: no load in this window"
        out[m] = sm
    return out


def _misses(sm: Summary) -> str:
    """The 451s of a window, by kind: only cache misses may have them."""
    parts = [
        f"{k} {sm.by_kind.get(k, Counter())['451']} of {sum(sm.by_kind.get(k, Counter()).values())}"
        for k in ("cold", "tagged")
    ]
    return f"{sm.deferred()} ({', '.join(parts)}; known logins {sm.deferred(KNOWN)})"


def _change(
    s: Scale,
    pair: tuple[str, str],
    owned_after: bool,
    user: int,
    make: Callable[[], None] | None = None,
    attr: str = MAIL_ATTR,
) -> dict[str, float]:
    """Make the change (default: plain ldapmodify on the provider); measure how long it takes
    to reach the consumer, then each instance."""
    c = s.cluster
    ldif = (add_value if owned_after else delete_value)(user_dn(user), attr, pair[1])
    tr = s.truth.begin(pair, owned_after, WINDOW)
    if make is None:
        c.provider.modify(ldif)
    else:
        make()
    t_done = time.monotonic()
    # the write happened somewhere while the command ran: the window counts from its end
    tr.bound = (t_done - tr.start) + WINDOW
    seen = c.consumer.wait_value(user_dn(user), attr, pair[1], present=owned_after)
    time.sleep(WINDOW + 0.5)
    out = {"command_s": t_done - tr.start, "replication_lag_s": max(0.0, seen - t_done)}
    for m in MTAS:
        last_old = s.load.last_answer(pair, m, not owned_after, tr.start)
        first_new = s.load.first_answer(pair, m, owned_after, tr.start)
        assert first_new is not None, f"{m} never gave the new answer for {pair}"
        # last old answer, counted from the moment the command had returned
        out[f"{m}_visible_s"] = max(0.0, (last_old or t_done) - t_done)
    return out


# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_address_added_or_revoked_on_the_provider_reaches_both_instances_within_the_bound(
    scale: Scale,
) -> None:
    t0 = time.monotonic()
    added = _change(scale, DYN_ADD, True, 4190)
    revoked = _change(scale, DYN_ADD, False, 4190)
    t1 = time.monotonic()
    scale.phase("replication: add + revoke", t0, t1)
    sums = _no_wrong(scale, t0, t1)
    for m in MTAS:
        assert sums[m].deferred() == 0, f"{m}: 451 with every server up: {sums[m].line()}"
    for what, r in (("add", added), ("revoke", revoked)):
        lag = r["replication_lag_s"]
        assert lag < LAG_ALLOWANCE, f"{what}: replication took {lag:.3f} s"
        # mta1 reads the consumer: TTL + replication lag; mta2 reads the provider: TTL.
        assert r["mta1_visible_s"] <= POSITIVE_TTL + lag + 0.5, (what, r)
        assert r["mta2_visible_s"] <= POSITIVE_TTL + 0.5, (what, r)
        scale.measured[f"replication ({what})"] = (
            f"ldapmodify {r['command_s'] * 1000:.0f} ms, provider->consumer "
            f"{lag * 1000:.1f} ms, last old answer after: mta1 {r['mta1_visible_s']:.2f} s, "
            f"mta2 {r['mta2_visible_s']:.2f} s (bound {POSITIVE_TTL:g} s TTL + lag)"
        )


@pytest.mark.timeout(30)
def test_a_write_sent_to_the_consumer_is_referred_to_the_provider_and_changes_nothing(
    scale: Scale,
) -> None:
    c = scale.cluster
    dn = user_dn(4193)
    p = c.consumer.try_modify(add_value(dn, MAIL_ATTR, "written-to-consumer@example.org"))
    assert p.returncode == 10, (p.returncode, p.stdout, p.stderr)  # LDAP_REFERRAL
    assert f"ldap://{c.net.end(PROVIDER, CONSUMER).ip}:389/{dn}" in p.stderr, p.stderr
    time.sleep(0.5)
    for server in (c.consumer, c.provider):
        assert "written-to-consumer@example.org" not in server.values(dn, MAIL_ATTR)


@pytest.mark.timeout(60)
def test_provider_killed_no_wrong_answers_the_consumer_reader_is_unaffected_the_other_fails_over(
    scale: Scale,
) -> None:
    c = scale.cluster
    assert c.connected_to("mta2") == {PROVIDER}
    t0 = time.monotonic()
    c.provider.kill()
    failover = poll(lambda: CONSUMER in c.connected_to("mta2"), 5.0)
    time.sleep(4.0)
    assert c.connected_to("mta1") == {CONSUMER}
    t_back = time.monotonic()
    c.provider.start()
    # replication resumes: a change made now on the provider reaches the consumer
    c.provider.modify(add_value(user_dn(4192), MAIL_ATTR, "after-restart@example.org"))
    t_mod = time.monotonic()
    resumed = c.consumer.wait_value(user_dn(4192), MAIL_ATTR, "after-restart@example.org", True)
    failback = poll(lambda: c.connected_to("mta2") == {PROVIDER}, 10.0)
    t1 = time.monotonic()
    scale.phase("provider killed", t0, t_back)
    scale.phase("provider back", t_back, t1)
    sums = _no_wrong(scale, t0, t1)
    assert failover is not None and failover < RECEIVE_TIMEOUT, failover
    assert failback is not None, "mta2 did not go back to the provider"
    event = {m: scale.summary(t0, t_back, m) for m in MTAS}
    assert sums["mta1"].deferred() == 0, sums["mta1"].line()  # unaffected
    # mta2: only cache misses (cold logins, unseen tagged keys) may get the 451 during the
    # switch; what it looked up recently never
    assert event["mta2"].deferred(KNOWN) == 0, event["mta2"].line()
    scale.measured["provider killed"] = (
        f"mta2 on the consumer after {failover:.2f} s, back on the provider "
        f"{failback:.1f} s after the restart; replication resumed in "
        f"{resumed - t_mod:.2f} s; p99 mta1 {event['mta1'].p99_ms:.0f} ms, "
        f"mta2 {event['mta2'].p99_ms:.0f} ms (max {event['mta2'].max_ms:.0f} ms); "
        f"451: mta1 {event['mta1'].deferred()}, mta2 {_misses(event['mta2'])}"
    )


def _consumer_outage(
    scale: Scale, name: str, begin: Callable[[], None], end: Callable[[], None]
) -> None:
    c = scale.cluster
    assert c.connected_to("mta1") == {CONSUMER}
    t0 = time.monotonic()
    begin()
    try:
        failover = poll(lambda: PROVIDER in c.connected_to("mta1"), 5.0)
        time.sleep(4.0)
    finally:
        t_back = time.monotonic()
        end()
    failback = poll(lambda: c.connected_to("mta1") == {CONSUMER}, 10.0)
    time.sleep(1.5)
    t1 = time.monotonic()
    scale.phase(name, t0, t_back)
    scale.phase(f"{name}: after", t_back, t1)
    sums = _no_wrong(scale, t0, t1)
    assert failover is not None, "mta1 did not fail over to the provider"
    assert failover <= RECEIVE_TIMEOUT + 1.0, failover
    assert failback is not None, "mta1 did not fail back to the consumer"
    event = {m: scale.summary(t0, t_back, m) for m in MTAS}
    assert sums["mta2"].deferred() == 0, sums["mta2"].line()  # reads the provider
    assert event["mta1"].deferred(KNOWN) == 0, event["mta1"].line()  # stale_if_error
    before = scale.load.summary(t0 - 1.0, t0, "mta1", answered_by=t0)
    scale.measured[name] = (
        f"mta1 on the provider after {failover:.2f} s, back on the consumer {failback:.1f} s "
        f"after the end; mta1 p99 {event['mta1'].p99_ms:.0f} ms (max "
        f"{event['mta1'].max_ms:.0f} ms; {before.p99_ms:.0f} ms before), mta2 p99 "
        f"{event['mta2'].p99_ms:.0f} ms; 451 on mta1: {_misses(event['mta1'])}"
    )


@pytest.mark.timeout(60)
def test_consumer_frozen_its_instance_fails_over_to_the_provider_and_back(scale: Scale) -> None:
    c = scale.cluster
    _consumer_outage(scale, "consumer frozen (SIGSTOP)", c.consumer.freeze, c.consumer.thaw)


@pytest.mark.timeout(60)
def test_link_to_the_consumer_cut_its_instance_fails_over_to_the_provider_and_back(
    scale: Scale,
) -> None:
    c = scale.cluster
    end = c.net.end(CONSUMER, "mta1")  # the server's end: mta1's packets vanish
    _consumer_outage(
        scale, "link mta1-consumer cut", lambda: c.net.cut(end), lambda: c.net.heal(end)
    )


@pytest.mark.timeout(90)
def test_full_partition_known_logins_from_stale_data_unknown_ones_451_then_fresh_again(
    scale: Scale,
) -> None:
    c = scale.cluster
    cut = [c.net.end(PROVIDER, "mta2"), c.net.end(CONSUMER, "mta2")]
    t0 = time.monotonic()
    for e in cut:
        c.net.cut(e)
    try:
        time.sleep(1.0)
        # a revoke while mta2 cannot see any server: mta1 gets it within the bound, mta2 keeps
        # its stale data (stale_if_error) until the partition heals
        tr = scale.truth.begin(DYN_REVOKE, False, WINDOW)
        c.provider.modify(delete_value(user_dn(4191), MAIL_ATTR, DYN_REVOKE[1]))
        time.sleep(WINDOW + 0.5)
        stale_answer = ask(c.mta["mta2"].socket, *DYN_REVOKE)
        fresh_answer = ask(c.mta["mta1"].socket, *DYN_REVOKE)
        # a login no instance has looked up yet: nothing to fall back on
        unknown_answer = ask(c.mta["mta2"].socket, login(4195), own_address(4195))
        time.sleep(0.5)
    finally:
        t_heal = time.monotonic()
        for e in cut:
            c.net.heal(e)
    tr.extend("mta2", t_heal + WINDOW)
    time.sleep(WINDOW + 3.0)
    t1 = time.monotonic()
    scale.phase("mta2 partitioned", t0, t_heal)
    scale.phase("mta2 partition healed", t_heal, t1)
    sums = _no_wrong(scale, t0, t1)
    # requests sent after the cut and answered before the heal
    during = scale.load.summary(t0 + 0.2, t_heal, "mta2", answered_by=t_heal)
    assert during.deferred(KNOWN) == 0, during.line()
    assert unknown_answer.startswith("451 4.3.0"), unknown_answer
    assert set(during.by_kind.get("cold", Counter())) <= {"451"}, during.line()
    # mta2 kept answering the revoked address from its stale data during the partition,
    # while mta1 had the revoke ...
    assert stale_answer.startswith("OK"), stale_answer
    assert fresh_answer.startswith("553 "), fresh_answer
    # ... and after the heal answers from fresh data: the revoke, and cold logins found again
    after = scale.summary(t_heal + WINDOW, t1, "mta2")
    assert after.deferred() == 0, after.line()
    assert after.by_kind.get("cold", Counter())["OK"] > 0, after.line()
    assert ask(c.mta["mta2"].socket, login(4195), own_address(4195)).startswith("OK")
    fresh = scale.load.first_answer(DYN_REVOKE, "mta2", False, t_heal)
    assert fresh is not None and fresh - t_heal <= WINDOW, fresh
    mta1_last_ok = scale.load.last_answer(DYN_REVOKE, "mta1", True, tr.start)
    assert sums["mta1"].deferred() == 0, sums["mta1"].line()
    assert mta1_last_ok is None or mta1_last_ok - tr.start <= WINDOW
    scale.measured["full partition of mta2"] = (
        f"{t_heal - t0:.1f} s; mta2 during: {during.line()}; the revoke made during it: "
        f"mta1 stopped accepting {(mta1_last_ok or tr.start) - tr.start:.2f} s after it, mta2 "
        f"accepted it from stale data ({stale_answer[:2]}) and rejected it "
        f"{fresh - t_heal:.2f} s after the heal"
    )


def _senders(s: Scale, *args: str) -> tuple[int, Any, str]:
    """`policyd senders --json ARGS` on mta1 (the host that reads the consumer first), with the
    "ldap" store: the consumer refers the write, and the writer goes on to the provider."""
    mta1 = s.cluster.mta["mta1"]
    cfg = mta1.workdir / "senders.toml"
    if not cfg.exists():
        mta1.senders_config(mta1.workdir / "senders.sqlite", WRITER_DN, WRITER_PASSWORD)
    return mta1.senders(cfg, *args)


def _state(s: Scale, pair: tuple[str, str]) -> str:
    rc, answer, err = _senders(s, "list", "--login", pair[0])
    assert rc == 0, (rc, answer, err)
    states = [e["state"] for e in answer["entries"] if e["address"] == pair[1]]
    assert len(states) == 1, answer
    return str(states[0])


@pytest.mark.timeout(60)
def test_senders_add_and_revoke_with_the_ldap_store_reach_both_instances_within_the_bound(
    scale: Scale,
) -> None:
    t0 = time.monotonic()
    results: dict[str, tuple[int, Any, str]] = {}

    def senders(what: str, *args: str) -> Callable[[], None]:
        def run() -> None:
            results[what] = _senders(scale, *args)

        return run

    added = _change(
        scale, DYN_VERIFIED, True, 4196, senders("add", "add", *DYN_VERIFIED, "--no-verify"),
        attr=VERIFIED_ATTR,
    )  # fmt: skip
    assert results["add"][0] == 0, results["add"]
    assert _state(scale, DYN_VERIFIED) == "verified"
    revoked = _change(
        scale, DYN_VERIFIED, False, 4196, senders("revoke", "revoke", *DYN_VERIFIED),
        attr=VERIFIED_ATTR,
    )  # fmt: skip
    assert results["revoke"][0] == 0, results["revoke"]
    t1 = time.monotonic()
    scale.phase("senders add + revoke (ldap store)", t0, t1)
    sums = _no_wrong(scale, t0, t1)
    for m in MTAS:
        assert sums[m].deferred(KNOWN) == 0, sums[m].line()
    for what, r in (("add", added), ("revoke", revoked)):
        lag = r["replication_lag_s"]
        assert lag < LAG_ALLOWANCE, (what, r)
        assert r["mta1_visible_s"] <= POSITIVE_TTL + lag + 0.5, (what, r)
        assert r["mta2_visible_s"] <= POSITIVE_TTL + 0.5, (what, r)
        scale.measured[f"senders {what} --ldap store"] = (
            f"policyd senders took {r['command_s'] * 1000:.0f} ms, provider->consumer "
            f"{lag * 1000:.1f} ms, last old answer after: mta1 {r['mta1_visible_s']:.2f} s, "
            f"mta2 {r['mta2_visible_s']:.2f} s"
        )


@pytest.mark.timeout(90)
def test_senders_add_while_the_provider_is_down_fails_stays_pending_writes_nothing_then_succeeds(
    scale: Scale,
) -> None:
    c = scale.cluster
    dn = user_dn(4197)
    t0 = time.monotonic()
    c.provider.kill()
    try:
        t = time.monotonic()
        rc, answer, err = _senders(scale, "add", *DYN_OUTAGE, "--no-verify")
        failed_in = time.monotonic() - t
        assert rc == 1, (rc, answer, err)
        assert answer["ok"] is False and answer["code"] == "store_unavailable", answer
        assert "stays waiting" in answer["message"], answer
        assert _state(scale, DYN_OUTAGE) == "pending"
        time.sleep(1.0)
        # nothing reached the consumer (the writer's second server refers writes away)
        assert DYN_OUTAGE[1] not in c.consumer.values(dn, VERIFIED_ATTR)
    finally:
        t_back = time.monotonic()
        c.provider.start()
    assert DYN_OUTAGE[1] not in c.provider.values(dn, VERIFIED_ATTR)
    assert DYN_OUTAGE[1] not in c.consumer.values(dn, VERIFIED_ATTR)
    poll(lambda: c.connected_to("mta2") == {PROVIDER}, 10.0)
    # retried once the provider is back: done, replicated, and accepted everywhere in time
    retried: dict[str, tuple[int, Any, str]] = {}

    def retry() -> None:
        retried["add"] = _senders(scale, "add", *DYN_OUTAGE, "--no-verify")

    r = _change(scale, DYN_OUTAGE, True, 4197, retry, attr=VERIFIED_ATTR)
    assert retried["add"][0] == 0, retried["add"]
    assert _state(scale, DYN_OUTAGE) == "verified"
    t1 = time.monotonic()
    scale.phase("senders add, provider down", t0, t_back)
    scale.phase("senders add retried", t_back, t1)
    _no_wrong(scale, t0, t1)  # the failed attempt changed no answer anywhere
    assert r["mta1_visible_s"] <= POSITIVE_TTL + r["replication_lag_s"] + 0.5, r
    assert r["mta2_visible_s"] <= POSITIVE_TTL + 0.5, r
    scale.measured["senders add during a provider outage"] = (
        f"refused after {failed_in:.2f} s ({answer['code']}: {answer['message']}), left "
        f"pending, nothing written on either server; retried after the restart: done, "
        f"provider->consumer {r['replication_lag_s'] * 1000:.1f} ms, last old answer after: "
        f"mta1 {r['mta1_visible_s']:.2f} s, mta2 {r['mta2_visible_s']:.2f} s"
    )


@pytest.mark.timeout(60)
def test_counts_of_requests_answers_and_wrong_answers_over_the_whole_run(
    scale: Scale, capsys: pytest.CaptureFixture[str]
) -> None:
    time.sleep(1.0)
    t_end = time.monotonic()
    scale.load.stop()
    lines = [
        "",
        f"scale-out run: {t_end - scale.t_start:.0f} s, {len(MTAS)} instances x {CONNS} "
        f"connections, ~{RATE:g} requests/s per instance",
    ]
    for name, t0, t1 in scale.phases:
        for m in MTAS:
            lines.append(f"  {name:<32} {m}: {scale.summary(t0, t1, m).line()}")
    total = {}
    for m in MTAS:
        total[m] = scale.summary(scale.t_start, t_end, m)
        lines.append(f"TOTAL {m}: {total[m].line()}")
    lines += [f"MEASURED {k}: {v}" for k, v in scale.measured.items()]
    with capsys.disabled():
        print("\n".join(lines))
    report = os.environ.get("SCALE_REPORT")
    if report:
        Path(report).write_text("\n".join(lines) + "\n")
    for m in MTAS:
        assert total[m].wrong == 0, total[m].wrong_examples
        assert total[m].errors == 0, scale.load.transport_errors[:5]
        assert total[m].requests >= RATE * 5, total[m].line()  # the load really ran
