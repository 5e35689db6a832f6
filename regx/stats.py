"""The statistics of many runs (regx ablate, curve and path): means over seeds, differences paired by
seed, and what several comparisons at once do to them. Student's t from scipy.stats; Holm's step-down
adjustment written out (scipy.stats.false_discovery_control does Benjamini-Hochberg, not Holm's
family-wise control)."""

from __future__ import annotations

import math
import statistics


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of its 95% confidence interval, Student's t; None for one value)."""
    from scipy.stats import t

    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def paired_ci(diffs: list[float]) -> tuple[float, float | None]:
    """(mean difference, half-width of its 95% confidence interval, Student's t; None for one pair)."""
    mean, half = mean_ci(diffs)
    return mean, half


def paired_p(diffs: list[float]) -> float | None:
    """The two-sided p-value of a paired t-test that the mean difference is zero (None below two pairs;
    1 when every pair is equal)."""
    from scipy.stats import t

    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if statistics.fmean(diffs) == 0 else 0.0
    return float(2 * t.sf(abs(statistics.fmean(diffs)) / (sd / math.sqrt(len(diffs))), len(diffs) - 1))


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values for comparing several arms with one baseline."""
    known = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def seeds_needed(diffs: list[float], limit: int = 1000) -> int | None:
    """The fewest paired seeds whose 95% interval would exclude zero for a difference of the observed mean
    and spread (None: it needs more than `limit`, or there is no difference or spread to go by)."""
    from scipy.stats import t

    if len(diffs) < 2 or statistics.fmean(diffs) == 0:
        return None
    mean, sd = abs(statistics.fmean(diffs)), statistics.stdev(diffs)
    if sd == 0:
        return 2
    return next((n for n in range(2, limit + 1) if t.ppf(0.975, n - 1) * sd / math.sqrt(n) < mean), None)
