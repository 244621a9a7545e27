"""The scale-out load generator's referee (tests/servers/ownership_load.py): it must call a
wrong answer wrong, or the tier's "zero wrong answers" would prove nothing."""

from __future__ import annotations

from tests.servers.ownership_load import OwnershipLoad, Plan, Truth

PAIR = ("u04190", "new1@example.org")


def referee(truth: Truth) -> OwnershipLoad:
    plan = Plan(steady=range(3), cold={}, dynamic=[PAIR], mix={"owned": 1})
    return OwnershipLoad({"mta1": "/nonexistent"}, truth, plan)


def test_static_kinds_are_judged_by_what_the_login_owns() -> None:
    load = referee(Truth({PAIR: False}))
    judge = load.classify
    assert judge(("mta1", "owned", None, True, 1.0, 1.1, "OK")) == (False, False)
    assert judge(("mta1", "owned", None, True, 1.0, 1.1, "553")) == (True, False)
    assert judge(("mta1", "foreign", None, False, 1.0, 1.1, "553")) == (False, False)
    assert judge(("mta1", "foreign", None, False, 1.0, 1.1, "OK")) == (True, False)
    # the 451 is never wrong; an unexpected answer always is
    assert judge(("mta1", "foreign", None, False, 1.0, 1.1, "451")) == (False, False)
    assert judge(("mta1", "owned", None, True, 1.0, 1.1, "554")) == (True, False)
    assert judge(("mta1", "owned", None, True, 1.0, 1.1, "other")) == (True, False)
    # unauthenticated clients: only the 554 is right
    assert judge(("mta1", "unauth", None, None, 1.0, 1.1, "554")) == (False, False)
    assert judge(("mta1", "unauth", None, None, 1.0, 1.1, "OK")) == (True, False)


def test_a_change_has_a_window_where_both_answers_count_then_only_the_new_one() -> None:
    truth = Truth({PAIR: False})
    load = referee(truth)
    tr = truth.begin(PAIR, owned_after=True, bound=3.0)
    t = tr.start

    def judge(t0: float, answer: str, inst: str = "mta1") -> tuple[bool, bool]:
        return load.classify((inst, "dynamic", PAIR, None, t0, t0 + 0.01, answer))

    assert judge(t - 1.0, "553") == (False, False)  # before: not owned
    assert judge(t - 1.0, "OK")[0] is True
    assert judge(t + 1.0, "553") == (False, True)  # in the window: either, marked
    assert judge(t + 1.0, "OK") == (False, True)
    assert judge(t + 3.5, "OK") == (False, False)  # after: owned only
    assert judge(t + 3.5, "553")[0] is True
    # a request sent before the change but answered inside the window may see either
    assert load.classify(("mta1", "dynamic", PAIR, None, t - 0.5, t + 0.1, "OK"))[0] is False


def test_a_window_extended_for_one_instance_only() -> None:
    truth = Truth({PAIR: True})
    load = referee(truth)
    tr = truth.begin(PAIR, owned_after=False, bound=2.0)
    tr.extend("mta2", tr.start + 10.0)  # mta2 was cut off: stale data until the heal
    late = tr.start + 5.0
    assert load.classify(("mta1", "dynamic", PAIR, None, late, late + 0.01, "OK"))[0] is True
    assert load.classify(("mta2", "dynamic", PAIR, None, late, late + 0.01, "OK"))[0] is False
    after = tr.start + 11.0
    assert load.classify(("mta2", "dynamic", PAIR, None, after, after + 0.01, "OK"))[0] is True


def test_two_changes_in_a_row() -> None:
    truth = Truth({PAIR: False})
    load = referee(truth)
    add = truth.begin(PAIR, owned_after=True, bound=1.0)
    revoke = truth.begin(PAIR, owned_after=False, bound=1.0)
    revoke.start = add.start + 5.0  # made 5 s later
    mid = add.start + 3.0
    assert load.classify(("mta1", "dynamic", PAIR, None, mid, mid + 0.01, "OK"))[0] is False
    assert load.classify(("mta1", "dynamic", PAIR, None, mid, mid + 0.01, "553"))[0] is True
    end = add.start + 7.0
    assert load.classify(("mta1", "dynamic", PAIR, None, end, end + 0.01, "553"))[0] is False
    assert load.classify(("mta1", "dynamic", PAIR, None, end, end + 0.01, "OK"))[0] is True


def test_summary_counts_answers_wrong_ones_and_latency() -> None:
    load = referee(Truth({PAIR: False}))
    load.records += [
        ("mta1", "owned", None, True, 1.0, 1.002, "OK"),
        ("mta1", "foreign", None, False, 1.1, 1.104, "OK"),  # wrong
        ("mta1", "cold", None, True, 1.2, 3.2, "451"),
        ("mta2", "owned", None, True, 1.3, 1.301, "553"),  # wrong, other instance
    ]
    s = load.summary(inst="mta1")
    assert (s.requests, s.wrong, s.deferred(), s.deferred(["owned"])) == (3, 1, 1, 0)
    assert s.answers == {"OK": 2, "451": 1}
    assert s.max_ms == 2000.0 and len(s.wrong_examples) == 1
    assert load.summary().wrong == 2
    assert load.summary(t_from=1.25).requests == 1
    assert load.summary(answered_by=2.0, inst="mta1").requests == 2
