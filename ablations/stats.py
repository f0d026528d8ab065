"""The statistics behind a grid's tables and figures: each row against the baseline row, over seeds.

Seeds pair in this project: seed k gives every cell the same initial weights (``torch.manual_seed``
before the model is built), the same data order and the same augmentation draws (keyed by seed,
epoch and index). So a row is compared with the baseline on its per-seed differences: a paired
t-test on n - 1 degrees of freedom. Where seeds do not pair (a released checkpoint's row, whose
seeds only reseed its probe), Welch's t-test on the two samples (Welch-Satterthwaite degrees of
freedom). A verdict needs at least ``MIN_N`` seeds on each side.

Families. The rows of one column compared with the baseline fall in two families: the methods (the
grid's cells) and the reference rows (random init, released checkpoints), which are not hypotheses
about methods. Within a family of m tested rows (untested ones do not count), Bonferroni: a row's
adjusted p is min(1, m p), its verdict is a difference where that is below ``ALPHA``, and its
difference is shown with the t interval of its own test at level 1 - ALPHA / m. A t interval at
level 1 - a excludes 0 exactly when the test's p < a, so on every row "the shown interval excludes
0" <=> "adjusted p < ALPHA" <=> "the verdict is a difference" (better / worse, higher / lower); and
by Bonferroni's inequality the m intervals of a family cover their true differences all at once
with probability at least 1 - ALPHA: simultaneous 95% intervals. tests/ablations/test_stats.py
checks both over hundreds of random families, paired and Welch.

Why Bonferroni and not Holm: Holm's step-down test rejects more, but its verdicts lack informative
simultaneous intervals. The intervals compatible with it (Strassburger & Bretz 2008) bound a
rejected row's difference by 0 and say nothing of its size; intervals at each row's Holm step level
(1 - ALPHA / (m - i + 1), Ludbrook 2000) agree with the verdicts, but when several rows truly
differ they cover together less often than 95% (94.1% in 4,000 simulated families of 8 rows
that all differ). Each row's own, unadjusted 95% interval is kept in ``table.csv`` beside the
shown one.

How many seeds would detect a given difference comes from the power of the same test (80%) at the
family's level ALPHA / m and the observed spread. scipy.stats computes the tests and intervals,
statsmodels the power.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
MIN_N = 3  # seeds per side below which no test runs: "n too small to test"
PAIRED, WELCH = "paired t", "Welch t"
NAN = float("nan")


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its 95% t interval (NaN bounds for n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean, t interval and sample sd of ``values`` (NaNs dropped)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(NAN, NAN, NAN, 0, NAN)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, NAN, NAN, 1, NAN)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


@dataclass(frozen=True)
class Comparison:
    """A row against the baseline: the mean difference (row - baseline) with the standard error and
    degrees of freedom of its t distribution, the test that ran ("" if none could) and its p-value;
    ``m``, the size of the row's family, sets the adjusted p and the level of the shown interval."""

    test: str
    n: int  # pairs, or the smaller sample under Welch
    diff: float
    se: float  # of diff; 0 where the differences (paired) or both samples (Welch) are constant
    df: float
    p: float
    sd: float  # of the per-seed differences (paired), or the pooled sd (Welch)
    m: int = 1  # tested rows in the family (Bonferroni's factor)

    @property
    def tested(self) -> bool:
        """Whether a test ran (enough seeds on each side)."""
        return bool(self.test) and not math.isnan(self.p)

    @property
    def level(self) -> float:
        """The confidence level of the shown interval: 1 - ALPHA / m."""
        return 1 - ALPHA / self.m

    @property
    def p_adj(self) -> float:
        """Bonferroni-adjusted p-value, min(1, m p); NaN where no test ran."""
        return min(1.0, self.m * self.p) if self.tested else NAN

    def interval(self, level: float) -> tuple[float, float]:
        """The t interval of the difference at ``level`` (NaN bounds from fewer than 2 values)."""
        if math.isnan(self.se):
            return NAN, NAN
        if self.se == 0.0:  # constant differences: a point (its degrees of freedom are undefined)
            return self.diff, self.diff
        half = float(stats.t.ppf(0.5 + level / 2, self.df)) * self.se
        return self.diff - half, self.diff + half

    @property
    def low(self) -> float:
        """Lower bound of the shown interval (level ``level``)."""
        return self.interval(self.level)[0]

    @property
    def high(self) -> float:
        """Upper bound of the shown interval (level ``level``)."""
        return self.interval(self.level)[1]


def compare(row: Mapping[int, float], base: Mapping[int, float], paired: bool = True) -> Comparison:
    """Compare per-seed values {seed: value} of a row with the baseline's, as a family of one.

    Paired on the seeds both have when ``paired``; Welch's test on the two samples otherwise. The
    difference and interval are given from 2 values on; the p-value only from ``MIN_N``.
    """
    row = {k: v for k, v in row.items() if not math.isnan(v)}
    base = {k: v for k, v in base.items() if not math.isnan(v)}
    if paired:
        seeds = sorted(set(row) & set(base))
        a = np.array([row[k] for k in seeds])
        b = np.array([base[k] for k in seeds])
        n = len(seeds)
    else:
        a, b = np.array(list(row.values())), np.array(list(base.values()))
        n = min(len(a), len(b))
    if n == 0:
        return Comparison("", 0, NAN, NAN, NAN, NAN, NAN)
    diff = float((a - b).mean() if paired else a.mean() - b.mean())
    if n < 2:
        return Comparison("", n, diff, NAN, NAN, NAN, NAN)
    test = (PAIRED if paired else WELCH) if n >= MIN_N else ""
    if paired:
        sd = float((a - b).std(ddof=1))
        se = sd / math.sqrt(n)
    else:
        sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if sd == 0.0:  # constant differences (or samples): the interval is a point; scipy's t would divide by 0
        return Comparison(test, n, diff, 0.0, NAN, (1.0 if diff == 0 else 0.0) if test else NAN, 0.0)
    res = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    return Comparison(test, n, diff, se, float(res.df), float(res.pvalue) if test else NAN, sd)


def family(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one family with its size set: m, the number of them that were tested
    (at least 1), Bonferroni's factor for their p-values and the level of their intervals."""
    m = max(1, sum(c.tested for c in comparisons))
    return [replace(c, m=m) for c in comparisons]


def seeds_needed(delta: float, sd: float, paired: bool = True, alpha: float = ALPHA) -> int | None:
    """Seeds (pairs, or per group under Welch) for 80% power to detect a difference of ``delta`` at
    level ``alpha``, two-sided, when the spread is ``sd``; None without a spread. At least ``MIN_N``."""
    if math.isnan(sd) or math.isnan(delta) or delta <= 0:
        return None
    if sd == 0.0:
        return MIN_N
    from statsmodels.stats.power import TTestIndPower, TTestPower

    power = TTestPower() if paired else TTestIndPower()
    effect = delta / sd
    if power.power(effect, MIN_N, alpha, alternative="two-sided") >= POWER:  # (nobs is nobs1 for two groups)
        return MIN_N
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the root finder's chatter
        try:
            n = power.solve_power(effect_size=effect, alpha=alpha, power=POWER, alternative="two-sided")
        except (ValueError, RuntimeError):
            return None
    n = float(np.asarray(n).reshape(-1)[0])
    return max(MIN_N, math.ceil(n)) if math.isfinite(n) else None


def verdict(c: Comparison, higher_is_better: bool | None) -> str:
    """The words a table puts in a comparison's place: "better"/"worse" (a score), "higher"/"lower"
    (a quantity that is not a score), "no detectable difference", or "n too small to test"."""
    if not c.tested:
        return "n too small to test"
    if c.p_adj >= ALPHA:
        return "no detectable difference"
    up = c.diff > 0
    if higher_is_better is None:
        return "higher" if up else "lower"
    return "better" if up == higher_is_better else "worse"
