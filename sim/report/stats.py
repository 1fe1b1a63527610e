"""Statistics over seeds: a summary with a bootstrap confidence interval, and
whether two sets of seeds differ by more than noise.

scipy supplies the bootstrap and the tests (exact small-sample
distributions, ties handled) rather than a version of our own; the
bootstrap's generator is seeded, so the same values always give the same
interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
ALPHA = 0.05           # a difference between strategies of one sweep is significant below this p


def mean_ci(values: Sequence[float]) -> list[float] | None:
    """The 95% percentile-bootstrap interval of the mean; None for fewer than two values."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None
    result = stats.bootstrap((data,), np.mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                             method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def describe(values: Sequence[float]) -> dict:
    """n, mean, median, min, max and the mean's 95% interval."""
    data = np.asarray(values, dtype=float)
    return {"n": int(data.size), "mean": float(data.mean()), "median": float(np.median(data)),
            "min": float(data.min()), "max": float(data.max()), "ci95": mean_ci(data)}


@dataclass(frozen=True)
class Paired:
    """first - second over the seeds both ran: in how many it differs, the
    mean difference, its 95% interval, and the Wilcoxon signed-rank test's p
    (None when no seed differs)."""

    n: int
    differing: int
    mean: float
    ci95: list[float] | None
    p: float | None

    @property
    def identical(self) -> bool:
        return self.p is None

    @property
    def can_be_significant(self) -> bool:
        """Whether this many differing seeds can give p < ALPHA at all (6 or more)."""
        return 2.0 / 2 ** self.differing < ALPHA

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA


def paired(first: Sequence[float], second: Sequence[float]) -> Paired:
    """Two strategies over the same seeds (the same trace and faults per
    seed): a paired test, which the seeds' spread does not drown."""
    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    differing = int(np.count_nonzero(differences))
    if not differing:
        return Paired(len(differences), 0, 0.0, [0.0, 0.0], None)
    return Paired(len(differences), differing, float(differences.mean()), mean_ci(differences),
                  float(stats.wilcoxon(differences).pvalue))


def differs(baseline: Sequence[float], current: Sequence[float], alpha: float) -> tuple[bool, str]:
    """Whether two independent samples differ, as asv decides: Mann-Whitney
    U when the samples are large enough for its p to fall below ``alpha``;
    otherwise only disjoint 95% intervals count. Returns (significant, how)."""
    n, m = len(baseline), len(current)
    if n and m and 2.0 / comb(n + m, n) < alpha:
        p = float(stats.mannwhitneyu(baseline, current).pvalue)
        return p < alpha, f"Mann-Whitney U p = {p:.2g}, {n} vs {m} seeds"
    first, second = mean_ci(baseline), mean_ci(current)
    if first is None or second is None:
        return False, f"{n} vs {m} seeds: too few to tell"
    disjoint = first[1] < second[0] or second[1] < first[0]
    return disjoint, f"95% intervals {'disjoint' if disjoint else 'overlap'} ({n} vs {m} seeds: too few for a test)"
