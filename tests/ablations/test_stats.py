"""ablations/stats.py against textbook cases computed by hand."""

import math

import pytest

from ablations import stats


def test_mean_and_its_t_interval_by_hand():
    # x = 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.2910, se 0.6455, t(0.975, 3) = 3.1824
    iv = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert iv.n == 4 and iv.mean == 2.5 and iv.sd == pytest.approx(1.290994, abs=1e-6)
    assert iv.low == pytest.approx(2.5 - 3.182446 * 0.645497, abs=1e-5)
    assert iv.high == pytest.approx(2.5 + 3.182446 * 0.645497, abs=1e-5)
    one = stats.mean_ci([7.0, float("nan")])
    assert one.n == 1 and one.mean == 7.0 and math.isnan(one.low)


def test_paired_t_test_by_hand():
    # differences 1, 2, 3, 4 (row - base): t = 2.5 / 0.6455 = 3.873 on 3 df, two-sided p = 0.0305
    base = {0: 70.0, 1: 71.0, 2: 69.0, 3: 72.0}
    row = {0: 71.0, 1: 73.0, 2: 72.0, 3: 76.0, 9: 99.0}  # seed 9 has no partner: left out
    c = stats.compare(row, base, paired=True)
    assert c.test == "paired t" and c.n == 4 and c.diff == 2.5
    assert c.p == pytest.approx(0.03047, abs=2e-4)
    assert (c.low, c.high) == pytest.approx((2.5 - 3.182446 * 0.645497, 2.5 + 3.182446 * 0.645497), abs=1e-4)
    assert c.sd == pytest.approx(1.290994, abs=1e-6)


def test_pairing_removes_the_shared_seed_effect():
    # Each seed moves both rows alike; the row is always 0.3 above: paired sees it, Welch cannot.
    base = {0: 70.0, 1: 75.0, 2: 66.0, 3: 72.0, 4: 68.0}
    row = {k: v + 0.3 + (0.01 if k % 2 else -0.01) for k, v in base.items()}
    paired = stats.compare(row, base, paired=True)
    welch = stats.compare(row, base, paired=False)
    assert paired.p < 1e-4 < 0.5 < welch.p
    assert welch.test == "Welch t"


def test_welch_by_hand():
    # a = 1, 2, 3, 4 (mean 2.5, var 5/3); b = 3, 5, 7 (mean 5, var 4)
    # se = sqrt(5/3/4 + 4/3) = 1.3229; t = -2.5 / 1.3229 = -1.8898
    # df = se^4 / ((5/12)^2 / 3 + (4/3)^2 / 2) = 3.0625 / 0.94676 = 3.2347
    c = stats.compare({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}, {0: 3.0, 1: 5.0, 2: 7.0}, paired=False)
    se = math.sqrt(5 / 3 / 4 + 4 / 3)
    df = se**4 / ((5 / 12) ** 2 / 3 + (4 / 3) ** 2 / 2)
    assert df == pytest.approx(3.2347, abs=1e-3)
    from scipy.stats import t

    assert c.diff == -2.5 and c.n == 3
    assert c.p == pytest.approx(2 * t.sf(2.5 / se, df), abs=1e-10) and 0.14 < c.p < 0.15
    assert (c.low, c.high) == pytest.approx((-2.5 - t.ppf(0.975, df) * se, -2.5 + t.ppf(0.975, df) * se), abs=1e-9)


def test_fewer_than_three_seeds_give_an_interval_but_no_test():
    c = stats.compare({0: 71.0, 1: 72.5}, {0: 70.0, 1: 70.5}, paired=True)
    assert c.diff == 1.5 and not math.isnan(c.low) and not c.tested and math.isnan(c.p)
    assert stats.verdict(stats.with_holm([c])[0], True) == "n too small to test"


def test_holm_by_hand():
    # p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06,
    # 0.04 x1 = 0.04 -> monotone 0.06; untested entries stay NaN and do not count
    adj = stats.holm([0.01, 0.04, float("nan"), 0.03, 0.005])
    assert adj[:2] == pytest.approx([0.03, 0.06]) and math.isnan(adj[2]) and adj[3:] == pytest.approx([0.06, 0.02])


def test_verdicts_follow_the_adjusted_p_and_the_direction():
    up = stats.Comparison("paired t", 3, 1.2, 0.5, 1.9, 0.01, 0.3, p_holm=0.03)
    down = stats.Comparison("paired t", 3, -1.2, -1.9, -0.5, 0.01, 0.3, p_holm=0.03)
    flat = stats.Comparison("paired t", 3, 0.4, -0.5, 1.3, 0.02, 0.3, p_holm=0.08)  # raw p < 0.05, Holm not
    assert stats.verdict(up, True) == "better" and stats.verdict(down, True) == "worse"
    assert stats.verdict(down, None) == "lower" and stats.verdict(up, False) == "worse"
    assert stats.verdict(flat, True) == "no detectable difference"


def test_seeds_needed_matches_the_power_table():
    # one-sample / paired t-test, d = 1, alpha 0.05 two-sided, power 0.8: n = 9.94 -> 10 (Cohen's tables)
    assert stats.seeds_needed(0.5, 0.5) == 10
    # d = 0.5: n = 33.4 -> 34; a difference far above the spread still needs the minimum
    assert stats.seeds_needed(0.5, 1.0) == 34
    assert stats.seeds_needed(5.0, 0.1) == stats.MIN_N
    # two independent groups, d = 1: 16.7 -> 17 per group
    assert stats.seeds_needed(1.0, 1.0, paired=False) == 17
    assert stats.seeds_needed(0.5, float("nan")) is None
