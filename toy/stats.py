"""Statistics to read the toy table: mean ± std over seeds and a paired bootstrap interval."""

from __future__ import annotations

import statistics

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_bootstrap(diffs: list[np.ndarray], resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-question differences (one array per seed, e.g. TPO − SFT_self correctness on the
    same questions) and its 95 % percentile interval, resampling seeds and, within each drawn seed,
    questions. Both sources of variation are in the interval: which base/data a seed drew and which
    questions were asked."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([d.mean() for d in diffs]))
    draws = np.empty(resamples)
    for b in range(resamples):
        seeds = rng.integers(len(diffs), size=len(diffs))
        draws[b] = np.mean([diffs[s][rng.integers(len(diffs[s]), size=len(diffs[s]))].mean() for s in seeds])
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)
