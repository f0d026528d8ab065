"""ablations/stats.py against textbook cases computed by hand, and its families' intervals against
their verdicts and their coverage over random families."""

import math

import numpy as np
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
    assert c.sd == pytest.approx(1.290994, abs=1e-6) and c.se == pytest.approx(0.645497, abs=1e-6) and c.df == 3


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
    assert stats.verdict(stats.family([c])[0], True) == "n too small to test"


def test_bonferroni_family_by_hand():
    # p = 0.01, 0.04, 0.03, 0.005 tested (m = 4) and one row too small to test, which does not count:
    # adjusted 0.04, 0.16, 0.12, 0.02; every interval at 1 - 0.05 / 4 = 98.75%, t(0.99375, 3) = 5.3919
    tested = [stats.Comparison("paired t", 4, 1.0, 0.5, 3, p, 1.0) for p in (0.01, 0.04, 0.03, 0.005)]
    small = stats.Comparison("", 2, 1.0, 0.5, 1, float("nan"), 1.0)
    fam = stats.family([*tested[:2], small, *tested[2:]])
    assert [c.m for c in fam] == [4] * 5 and fam[0].level == pytest.approx(0.9875)
    adj = [c.p_adj for c in fam]
    assert adj[:2] == pytest.approx([0.04, 0.16]) and math.isnan(adj[2]) and adj[3:] == pytest.approx([0.12, 0.02])
    assert (fam[0].low, fam[0].high) == pytest.approx((1.0 - 5.391949 * 0.5, 1.0 + 5.391949 * 0.5), abs=1e-5)
    assert fam[0].interval(0.95) == pytest.approx((1.0 - 3.182446 * 0.5, 1.0 + 3.182446 * 0.5), abs=1e-5)
    assert stats.family([small])[0].m == 1  # nothing tested: the interval stays at 95%


def test_verdicts_follow_the_adjusted_p_and_the_direction():
    up = stats.Comparison("paired t", 3, 1.2, 0.3, 2, 0.01, 0.5, m=3)  # adjusted 0.03
    down = stats.Comparison("paired t", 3, -1.2, 0.3, 2, 0.01, 0.5, m=3)
    flat = stats.Comparison("paired t", 3, 0.4, 0.3, 2, 0.02, 0.5, m=4)  # raw p < 0.05, adjusted 0.08 not
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
    # at a family's level 0.05 / 3, d = 1: n = 13.4 -> 14 (the normal approximation
    # ((z(1 - 0.05/6) + z(0.8)) / d)^2 + z(1 - 0.05/6)^2 / 2 gives 13.3)
    assert stats.seeds_needed(0.5, 0.5, alpha=0.05 / 3) == 14


def random_family(rng: np.random.Generator, truths: np.ndarray) -> tuple[list[stats.Comparison], list[bool]]:
    """One column's family against a shared baseline of 3-8 seeds: rows with true differences
    ``truths``, each paired (sharing the baseline's per-seed effect) or not (its own sample of 3-8,
    independent of the baseline's, so Welch's test)."""
    n = int(rng.integers(3, 9))
    seed_effect = rng.normal(0.0, 2.0, n)
    base = seed_effect + rng.normal(0.0, 1.0, n)
    comps, paired = [], []
    for truth in truths:
        pair = bool(rng.random() < 0.5)
        spread = rng.uniform(0.3, 2.0)
        values = seed_effect + truth + rng.normal(0.0, spread, n) if pair else \
            rng.normal(truth, spread, int(rng.integers(3, 9)))
        comps.append(stats.compare(dict(enumerate(values)), dict(enumerate(base)), paired=pair))
        paired.append(pair)
    return stats.family(comps), paired


def test_every_shown_interval_excludes_zero_exactly_where_the_verdict_is_a_difference():
    """Over 300 random families of 1-6 rows, paired and Welch, with and without true differences."""
    rng = np.random.default_rng(0)
    seen = {"difference": 0, "none": 0, "unadjusted 95% disagrees": 0, "paired": 0, "Welch": 0}
    for _ in range(300):
        m = int(rng.integers(1, 7))
        truths = rng.choice([0.0, 0.5, 1.0, 2.0, 4.0], m) * rng.choice([-1.0, 1.0], m)
        fam, paired = random_family(rng, truths)
        for c, pair in zip(fam, paired):
            assert c.tested and c.m == m and c.test == (stats.PAIRED if pair else stats.WELCH)
            v = stats.verdict(c, higher_is_better=True)
            excludes = c.low > 0 or c.high < 0
            assert excludes == (v in ("better", "worse")), (c, v)
            assert v != "better" or c.low > 0
            assert v != "worse" or c.high < 0
            low95, high95 = c.interval(0.95)
            seen["difference" if excludes else "none"] += 1
            seen["unadjusted 95% disagrees"] += (low95 > 0 or high95 < 0) != excludes
            seen["paired" if pair else "Welch"] += 1
    assert min(seen.values()) >= 100, seen  # every case occurs, the one the unadjusted intervals got wrong too


def test_a_familys_intervals_cover_its_true_differences_together_at_95_percent():
    """Bonferroni: the 5 intervals of a family all cover their true differences in at least 95% of
    families (here 400 of them); the rows' own 95% intervals do in about 85% (0.95^5 = 77% were the
    rows independent; the shared baseline makes their misses overlap)."""
    rng = np.random.default_rng(1)
    families, together, together95 = 400, 0, 0
    for _ in range(families):
        truths = rng.normal(0.0, 2.0, 5)
        fam, _ = random_family(rng, truths)
        together += all(c.low <= t <= c.high for c, t in zip(fam, truths))
        together95 += all(c.interval(0.95)[0] <= t <= c.interval(0.95)[1] for c, t in zip(fam, truths))
    assert together / families >= 0.95 and together95 / families < 0.9
