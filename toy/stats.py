"""Statistics to read the toy table: mean ± std over seeds and a paired bootstrap interval."""

from __future__ import annotations

import statistics

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_bootstrap(diffs: np.ndarray, resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-question differences and its 95 % percentile interval.

    ``diffs[s, q]`` is, for seed ``s`` and question ``q``, e.g. TPO's correctness minus SFT_self's on
    that question; every seed answers the same questions. A replicate draws seeds and questions with
    replacement (one question draw shared by all seeds, as the questions are shared), so both which
    base and data a seed drew and which questions were asked are in the interval. With 3-5 seeds
    the seed draw has few distinct outcomes: read the interval as approximate.
    """
    diffs = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    num_seeds, num_questions = diffs.shape
    draws = np.empty(resamples)
    for b in range(resamples):
        seeds = rng.integers(num_seeds, size=num_seeds)
        questions = rng.integers(num_questions, size=num_questions)
        draws[b] = diffs[np.ix_(seeds, questions)].mean()
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)
