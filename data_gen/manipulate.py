"""Stage 3: the query frame set ``S_a`` and the manipulated set ``S_b`` (paper, Sec. 2.1 and 3.1).

- *irrelevant*: ``S_a`` = ``window`` consecutive sampled frames at a random position,
  ``S_b`` = all the other sampled frames (disjoint from ``S_a``);
- *incomplete*: ``S_a`` = all sampled frames, ``S_b`` = ``keep`` of them kept uniformly
  (a subset of ``S_a``).

Randomness is drawn from a generator seeded by (seed, video), never from a shared stream, so
a video gets the same segments whatever other videos or shards the run holds.
"""

from __future__ import annotations

import random

from data_gen.config import ManipulationConfig
from data_gen.items import Segment, segment_id


def irrelevant_windows(num: int, window: int, count: int, rng: random.Random) -> list[list[int]]:
    """``count`` non-overlapping runs of ``window`` consecutive positions in ``range(num)``,
    uniformly over all such placements (choose sorted slots, then spread them out)."""
    slots = sorted(rng.sample(range(num - count * window + count), count))
    return [list(range(s + i * (window - 1), s + i * (window - 1) + window)) for i, s in enumerate(slots)]


def incomplete_positions(num: int, keep: int, rng: random.Random) -> list[int]:
    """``keep`` of ``range(num)`` spread uniformly, with a random phase."""
    phase = rng.random()
    return [int((i + phase) * num / keep) for i in range(keep)]


def make_segments(video: str, frame_indices: list[int], cfg: ManipulationConfig, seed: int) -> list[Segment]:
    rng = random.Random(f"{seed}:{video}")
    n = len(frame_indices)
    frames = tuple(frame_indices)
    segments = []
    for k, window in enumerate(irrelevant_windows(n, cfg.irrelevant_window, cfg.irrelevant_per_video, rng)):
        s_a = tuple(frames[p] for p in window)
        s_b = tuple(frames[p] for p in range(n) if p not in window)
        segments.append(Segment(segment_id(video, "irrelevant", k), video, "irrelevant", frames, s_a, s_b))
    for k in range(cfg.incomplete_per_video):
        s_b = tuple(frames[p] for p in incomplete_positions(n, cfg.incomplete_keep, rng))
        segments.append(Segment(segment_id(video, "incomplete", k), video, "incomplete", frames, frames, s_b))
    return segments
