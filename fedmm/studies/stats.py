"""Uncertainty across seeds: the one place fedmm turns repeated runs into intervals and significance.

Each seed is one independent replicate of a whole run (partition, initialization, sampling and shuffling
all derive from it; the dataset content stays fixed). Over n seeds a metric gets
  - a 95% Student-t confidence interval of its mean: mean ± t(0.975, n-1) · sd / √n;
  - against a baseline run with the same seeds, a paired t-test on the per-seed differences (two-sided,
    α = 0.05): `significant` when the 95% t-interval of the mean difference excludes 0. Comparisons are
    not corrected for multiplicity; with many strategies, some "significant" marks are expected by chance.
With 3 seeds t(0.975, 2) = 4.30: an interval is 2.5 sd wide on each side, so only large, consistent
differences are called significant. One seed gives no interval (None).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

LEVEL = 0.95
EQUAL_UP_TO = 1e-12  # relative: differences closer than this are float rounding of one value
INTERVAL_NAME = "95% Student-t confidence interval of the mean across seeds"
TEST_NAME = "paired t-test across seeds, two-sided, α = 0.05, no multiplicity correction"


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float | None  # None with fewer than 2 values
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def format(self, digits: int = 3) -> str:
        if self.half_width is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """The mean of `values` and the half-width of its Student-t interval; None when no value is given
    (missing and NaN values are left out)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return None
    n = len(kept)
    mean = sum(kept) / n
    if n < 2:
        return Interval(mean, None, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
    return Interval(mean, float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class PairedDifference:
    difference: Interval  # of (value - baseline), paired by seed
    p_value: float | None  # None with fewer than 2 pairs, or when every difference is equal (up to float rounding)

    @property
    def significant(self) -> bool:
        low, high = self.difference.low, self.difference.high
        return low is not None and high is not None and (low > 0 or high < 0)

    @property
    def direction(self) -> int:
        """+1 significantly above the baseline, -1 below, 0 not significant."""
        return 0 if not self.significant else (1 if self.difference.mean > 0 else -1)


def paired_difference(values: dict[int, float | None], baseline: dict[int, float | None],
                      level: float = LEVEL) -> PairedDifference | None:
    """`values` against `baseline`, both keyed by seed, over the seeds both have; None when none is shared."""
    seeds = sorted(seed for seed in values if _present(values.get(seed)) and _present(baseline.get(seed)))
    if not seeds:
        return None
    differences = [values[seed] - baseline[seed] for seed in seeds]
    interval = t_interval(differences, level)
    p_value = None
    # Differences equal up to float rounding (0.3 - 0.1 against 0.7 - 0.5) have no spread to test: t would be
    # mean / (rounding error) and p about 1e-30, a number the data does not support.
    if len(seeds) >= 2 and max(differences) - min(differences) > EQUAL_UP_TO * max(1.0, *map(abs, differences)):
        p_value = float(scipy_stats.ttest_1samp(differences, 0.0).pvalue)
    return PairedDifference(interval, p_value)


def _present(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
