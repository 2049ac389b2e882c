"""Honest error bars for runs repeated over seeds: mean, sample standard deviation, a 95% confidence interval, and
whether two configurations differ by more than their seed-to-seed noise.

    mean ± std (n=K)      std is the sample standard deviation (ddof 1) of the K runs
    95% CI                mean ± t(0.975, K-1) · std / sqrt(K), Student's t for the mean of K runs, clipped to the
                          metric's range
    significant           Welch's t-test (unequal variances) at the 5% level, two-sided

With one run there is no spread to report: std and the interval are left out, and no difference is called
significant. The formulas are SciPy's (`scipy.stats.t`, `scipy.stats.ttest_ind(equal_var=False)`).

The interval is clipped, not transformed: the mean of K runs' accuracies cannot lie above 1, so the part of Student's
interval beyond the metric's range (`metric_range`: [0, 1] for accuracy, F1, precision and recall, [0, inf) for a
loss) holds no possible mean; cutting it off leaves the part inside the range as Student's t gives it. A Wilson
interval needs counts of right and wrong answers, which a run's summary does not keep, and a logit interval breaks
down at a run that scored exactly 1 (common on small validation sets); clipping needs neither.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05
SPREAD = ("mean ± std over n seeds (sample standard deviation); 95% CI: mean ± t(0.975, n-1)·std/√n, "
          "Student's t for the mean of n runs, clipped to the metric's range (an accuracy's to [0, 1])")
#: metrics that are fractions, by the end of their name (`accuracy`, `top5_accuracy`, `ner_f1`): within [0, 1]
FRACTIONS = ("accuracy", "f1", "precision", "recall")
LEGEND = SPREAD + ("; ≈ marks a row whose difference from the best row is not significant at the 5% level "
                   "(Welch's t-test)")


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # None with one value
    ci_low: float | None
    ci_high: float | None

    def shown(self, digits: int = 4) -> str:
        """'0.9712 ± 0.0031 (n=3)', or the single value."""
        return f"{mean_std(self.mean, self.std, f'.{digits}f')} (n={self.n})"

    def interval(self, digits: int = 4) -> str:
        return "" if self.ci_low is None else f"[{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"


def mean_std(mean: float, std: float | None, spec: str = ".4f") -> str:
    """'0.9712 ± 0.0031': how every table writes a mean and its spread (`spec` formats both; no std: the mean)."""
    return f"{mean:{spec}}" if std is None else f"{mean:{spec}} ± {std:{spec}}"


def metric_range(metric: str | None, scale: float = 1.0) -> tuple[float, float]:
    """The values a metric can take, by its name: fractions (accuracy, F1, precision, recall) within [0, scale]
    (`scale` 100 for percentages), a loss at least 0, anything else unbounded."""
    name = (metric or "").lower()
    if name.endswith(FRACTIONS):
        return 0.0, scale
    if name.endswith("loss"):
        return 0.0, math.inf
    return -math.inf, math.inf


def summarize(values: Sequence[float], metric: str | None = None, scale: float = 1.0) -> Summary:
    """Mean, spread and 95% interval of K runs' values of `metric` (its name bounds the interval, see
    `metric_range`; `scale` 100 when the values are percentages)."""
    if not values:
        raise ValueError("summarize: no values")
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, None, None, None)
    from scipy import stats

    std = statistics.stdev(values)
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    low, high = metric_range(metric, scale)
    return Summary(n, mean, std, max(mean - half, low), min(mean + half, high))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test between two groups of runs; None when either has fewer than 2, or when
    neither varies (no spread: nothing to test against)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return None if statistics.fmean(a) == statistics.fmean(b) else 0.0
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def differs(a: Sequence[float], b: Sequence[float]) -> bool | None:
    """Whether the groups differ significantly at the 5% level (None: too few runs to tell)."""
    p = welch_p(a, b)
    return None if p is None else p < ALPHA
