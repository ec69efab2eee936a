"""Decoded frames shared by the stages that look at them (captioning, answering).

A video's sampled frames are decoded once and every job picks its frames from them. Jobs come
sorted by video, so a small LRU holds the videos being worked on; a lock per entry makes
concurrent jobs on one video wait for a single decode instead of each opening the file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from tpo.data.frames import read_frames


class FrameCache:
    def __init__(self, size: int = 4):
        self.size = size
        self._entries: OrderedDict = OrderedDict()  # (path, indices) -> [lock, frames | None]
        self._lock = threading.Lock()

    def get(self, path: Path, sampled: tuple[int, ...], wanted: tuple[int, ...]) -> np.ndarray:
        """Frames ``wanted`` (a subset of ``sampled``) as ``(len(wanted), H, W, 3)``."""
        frames = self._decoded(path, tuple(sampled))
        position = {f: i for i, f in enumerate(sampled)}
        return frames[[position[f] for f in wanted]]

    def _decoded(self, path: Path, indices: tuple[int, ...]) -> np.ndarray:
        key = (str(path), indices)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [threading.Lock(), None]
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            self._entries.move_to_end(key)
        with entry[0]:
            if entry[1] is None:
                entry[1] = read_frames(path, list(indices))
            return entry[1]


FRAMES = FrameCache()
