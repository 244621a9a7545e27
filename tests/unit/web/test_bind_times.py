"""BindTimes: an unknown login's answer (without web.login_decoy_dn) is held for a duration
drawn from the recent real binds (issue 23, section 3)."""

from __future__ import annotations

from policyd.web.auth import BindTimes


def test_before_any_bind_the_hold_is_the_first_guess_with_jitter() -> None:
    t = BindTimes()
    holds = {t.hold() for _ in range(50)}
    assert all(0.9 * BindTimes.FIRST <= h <= 1.1 * BindTimes.FIRST for h in holds)
    assert len(holds) > 1


def test_the_hold_is_one_of_the_last_binds() -> None:
    t = BindTimes()
    for i in range(BindTimes.SIZE + 10):
        t.add(float(i))
    holds = {t.hold() for _ in range(2000)}
    # only the last SIZE durations are remembered, and the draw spreads over them
    assert holds <= {float(i) for i in range(10, BindTimes.SIZE + 10)}
    assert len(holds) > BindTimes.SIZE // 2
