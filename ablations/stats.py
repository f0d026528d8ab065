"""The statistics behind a grid's tables and figures: each row against the baseline row, over seeds.

Seeds pair in this project: seed k gives every cell the same initial weights (``torch.manual_seed``
before the model is built), the same data order and the same augmentation draws (keyed by seed,
epoch and index). So a row is compared with the baseline on its per-seed differences: a paired
t-test, and the mean difference with its 95% t interval (n - 1 degrees of freedom). Where seeds do
not pair (a released checkpoint's row, whose seeds only reseed its probe), Welch's t-test on the two
samples, with its Welch-Satterthwaite interval. The rows compared in one column are one family:
their p-values are adjusted by Holm-Bonferroni. A verdict needs at least ``MIN_N`` seeds on each
side and an adjusted p below ``ALPHA``. How many seeds would detect a given difference comes from
the power of the same test (80% at the 5% level) at the observed spread.

scipy.stats computes the tests and intervals; statsmodels the Holm adjustment and the power.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    """A row against the baseline: the mean difference (row - baseline) and its 95% interval, the
    test that ran ("" if none could) and its p-value, before and after the Holm adjustment."""

    test: str
    n: int  # pairs, or the smaller sample under Welch
    diff: float
    low: float
    high: float
    p: float
    sd: float  # of the per-seed differences (paired), or the pooled sd (Welch)
    p_holm: float = NAN

    @property
    def tested(self) -> bool:
        """Whether a test ran (enough seeds on each side)."""
        return bool(self.test) and not math.isnan(self.p)


def compare(row: Mapping[int, float], base: Mapping[int, float], paired: bool = True) -> Comparison:
    """Compare per-seed values {seed: value} of a row with the baseline's.

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
        if n == 0:
            return Comparison("", 0, NAN, NAN, NAN, NAN, NAN)
        d = a - b
        diff = float(d.mean())
        if n < 2:
            return Comparison("", 1, diff, NAN, NAN, NAN, NAN)
        sd = float(d.std(ddof=1))
        if sd == 0.0:  # identical differences: the interval is a point; scipy's t would divide by 0
            return Comparison(PAIRED if n >= MIN_N else "", n, diff, diff, diff,
                              (1.0 if diff == 0 else 0.0) if n >= MIN_N else NAN, 0.0)
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(0.95)
        return Comparison(PAIRED if n >= MIN_N else "", n, diff, float(ci.low), float(ci.high),
                          float(res.pvalue) if n >= MIN_N else NAN, sd)
    a, b = np.array(list(row.values())), np.array(list(base.values()))
    n = min(len(a), len(b))
    if n == 0:
        return Comparison("", 0, NAN, NAN, NAN, NAN, NAN)
    diff = float(a.mean() - b.mean())
    if n < 2:
        return Comparison("", n, diff, NAN, NAN, NAN, NAN)
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if sd == 0.0:
        return Comparison(WELCH if n >= MIN_N else "", n, diff, diff, diff,
                          (1.0 if diff == 0 else 0.0) if n >= MIN_N else NAN, 0.0)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return Comparison(WELCH if n >= MIN_N else "", n, diff, float(ci.low), float(ci.high),
                      float(res.pvalue) if n >= MIN_N else NAN, float(sd))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of one family; NaN entries (not tested) stay NaN and do not
    count towards the family's size."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [NAN] * len(pvalues)
    if idx:
        adjusted = multipletests([pvalues[i] for i in idx], alpha=ALPHA, method="holm")[1]
        for i, p in zip(idx, adjusted):
            out[i] = float(p)
    return out


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one column with their Holm-adjusted p-values filled in."""
    from dataclasses import replace

    return [replace(c, p_holm=p) for c, p in zip(comparisons, holm([c.p for c in comparisons]))]


def seeds_needed(delta: float, sd: float, paired: bool = True) -> int | None:
    """Seeds (pairs, or per group under Welch) for 80% power to detect a difference of ``delta`` at
    the 5% level, two-sided, when the spread is ``sd``; None without a spread. At least ``MIN_N``."""
    if math.isnan(sd) or math.isnan(delta) or delta <= 0:
        return None
    if sd == 0.0:
        return MIN_N
    from statsmodels.stats.power import TTestIndPower, TTestPower

    power = TTestPower() if paired else TTestIndPower()
    effect = delta / sd
    if power.power(effect, MIN_N, ALPHA, alternative="two-sided") >= POWER:  # (nobs is nobs1 for two groups)
        return MIN_N
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the root finder's chatter
        try:
            n = power.solve_power(effect_size=effect, alpha=ALPHA, power=POWER, alternative="two-sided")
        except (ValueError, RuntimeError):
            return None
    n = float(np.asarray(n).reshape(-1)[0])
    return max(MIN_N, math.ceil(n)) if math.isfinite(n) else None


def verdict(c: Comparison, higher_is_better: bool | None) -> str:
    """The words a table puts in a comparison's place: "better"/"worse" (a score), "higher"/"lower"
    (a quantity that is not a score), "no detectable difference", or "n too small to test"."""
    if not c.tested:
        return "n too small to test"
    if math.isnan(c.p_holm) or c.p_holm >= ALPHA:
        return "no detectable difference"
    up = c.diff > 0
    if higher_is_better is None:
        return "higher" if up else "lower"
    return "better" if up == higher_is_better else "worse"
