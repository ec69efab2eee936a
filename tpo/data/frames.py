"""Frame sampling and decoding: the one place where video frames are chosen and read."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np


class VideoReadError(RuntimeError):
    """A video that is missing, empty or cannot be decoded."""


def uniform_frame_indices(num_total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``num_total`` frames (segment centres)."""
    if num_total <= 0:
        raise ValueError("a video with no frames has nothing to sample")
    return [min(num_total - 1, int((i + 0.5) * num_total / num_frames)) for i in range(num_frames)]


def _reader(path: str | Path):
    import decord  # imported lazily: decord pulls in native libraries

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"video not found: {path}")
    try:
        return decord.VideoReader(str(path), num_threads=1)
    except Exception as err:  # decord raises its own DECORDError with a C++ trace
        raise VideoReadError(f"cannot decode video {path}: {str(err).splitlines()[0]}") from None


@lru_cache(maxsize=65536)
def count_frames(path: str | Path) -> int:
    """Number of decodable frames in a video; raises :class:`VideoReadError` when unreadable."""
    count = len(_reader(path))
    if count == 0:
        raise VideoReadError(f"video has no frames: {path}")
    return count


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """Decode exactly ``indices`` from a video as ``(len(indices), H, W, 3)`` uint8 RGB."""
    reader = _reader(path)
    if max(indices) >= len(reader):
        raise VideoReadError(f"frame index {max(indices)} is beyond the {len(reader)} frames of {path}")
    try:
        return reader.get_batch(list(indices)).asnumpy()
    except Exception as err:
        raise VideoReadError(f"cannot decode frames {indices} of {path}: {str(err).splitlines()[0]}") from None
