"""Statistics of the toy experiment, fixed before its runs (issue 19's pre-registration).

- Primary: a 95 % t-interval over seeds of the per-seed paired difference (:func:`t_interval`).
- Secondary: a bootstrap that resamples seeds and whole clips (:func:`clip_bootstrap`): the
  questions of one clip share its video, so they are not independent.
- :func:`decision` reads an interval by the rule fixed in advance; :func:`seeds_for_half_width`
  is the power plan.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import stats

NO_EFFECT_MARGIN = 0.02  # "no effect of 2 points or more"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided t-interval over independent replicates (here: seeds)."""
    mean, std = mean_std(values)
    if len(values) < 2:
        return mean, -math.inf, math.inf
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


def seeds_for_half_width(per_seed_sd: float, half_width: float, confidence: float = 0.95) -> int:
    """The fewest seeds whose t-interval half-width at ``per_seed_sd`` is at most ``half_width``."""
    n = 2
    while stats.t.ppf(0.5 + confidence / 2, n - 1) * per_seed_sd / math.sqrt(n) > half_width:
        n += 1
    return n


def clip_bootstrap(diffs: np.ndarray, clips: list[str], resamples: int = 4000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-question differences and its 95 % percentile interval.

    ``diffs[s, q]`` is, for seed ``s`` and question ``q``, e.g. TPO's correctness minus SFT_self's;
    every seed answers the same questions and ``clips[q]`` names question ``q``'s clip. A replicate
    draws seeds, and clips (with all their questions), with replacement; the clip draw is shared by
    all seeds, as the clips are.
    """
    diffs = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    names = sorted(set(clips))
    members = [np.flatnonzero(np.asarray(clips) == name) for name in names]
    per_clip = np.stack([diffs[:, m].sum(axis=1) for m in members], axis=1)  # (seeds, clips)
    sizes = np.array([len(m) for m in members])
    draws = np.empty(resamples)
    for b in range(resamples):
        s = rng.integers(diffs.shape[0], size=diffs.shape[0])
        c = rng.integers(len(names), size=len(names))
        draws[b] = per_clip[np.ix_(s, c)].sum() / (len(s) * sizes[c].sum())
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)


def decision(low: float, high: float, margin: float = NO_EFFECT_MARGIN) -> str:
    """The pre-registered reading of a 95 % interval of TPO − SFT_self."""
    if low > 0:
        return "TPO wins"
    if -margin < low and high < margin:
        return f"no effect of {100 * margin:g} points or more"
    return "unresolved"
