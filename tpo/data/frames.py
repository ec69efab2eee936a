"""Frame sampling and decoding: the one place where video frames are chosen, read and timed.

Every model sees a :class:`Clip`: the decoded frames plus ``transformers``' own
:class:`~transformers.video_utils.VideoMetadata` (native fps, frame count, duration and the indices
of the frames shown), so that processors that place frames in time (Qwen2.5-VL's absolute-time
rotary positions, Qwen3-VL's and Qwen3.5's ``<t seconds>`` stamps, GLM-4.1V's whole seconds, Gemma 4's
``mm:ss``) see the video's real timing, identically in
``data_gen``, training, the reference precompute and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from transformers.video_utils import VideoMetadata

from tpo.data.decoders import DecodeFailure, Opened, backend_name, decode, open_video
from tpo.errors import TPOError


NUM_FRAMES = 32  # frames per video unless a setting says otherwise: the paper's count, for generation and evaluation


class VideoReadError(TPOError):
    """A video that is missing, empty or cannot be decoded."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float  # native frames per second (0 when the container does not say)


class ShownFrames(VideoMetadata):
    """``VideoMetadata`` whose ``sampled_fps`` is the rate of the frames actually shown.

    ``transformers`` assumes the shown frames are spread over the whole video
    (``len(frames_indices) / total_num_frames * fps``). A window of 4 consecutive sampled frames
    (the paper's irrelevant-clip ``S_a``) would then look 8x slower than it is; the mean gap
    between the shown frames is right for both.
    """

    @property
    def sampled_fps(self) -> float:
        indices = self.frames_indices or []
        if not self.fps or len(indices) < 2 or indices[-1] == indices[0]:
            return super().sampled_fps
        return self.fps * (len(indices) - 1) / (indices[-1] - indices[0])


@dataclass
class Clip:
    """Frames ``(T, H, W, 3)`` uint8 RGB of one video, with their timing."""

    frames: np.ndarray
    metadata: VideoMetadata

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def times(self) -> list[float]:
        """Seconds from the video's start of each shown frame."""
        if not self.metadata.fps:
            raise VideoReadError("the video's container gives no frame rate, so its frames have no times")
        return self.metadata.timestamps


def uniform_frame_indices(num_total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``num_total`` frames (segment centres)."""
    if num_total <= 0:
        raise ValueError("a video with no frames has nothing to sample")
    return [min(num_total - 1, int((i + 0.5) * num_total / num_frames)) for i in range(num_frames)]


def frame_metadata(info: VideoInfo, indices: list[int], height: int | None = None,
                   width: int | None = None) -> ShownFrames:
    """The timing of frames ``indices`` of a video, as the processors take it (``video_metadata``)."""
    fps = info.fps if info.fps > 0 else None
    return ShownFrames(total_num_frames=info.num_frames, fps=fps, height=height, width=width,
                       duration=info.num_frames / fps if fps else None, video_backend=backend_name(),
                       frames_indices=[int(i) for i in indices])


def _reader(path: str | Path) -> Opened:
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"video not found: {path}")
    try:
        return open_video(path)
    except DecodeFailure as err:
        raise VideoReadError(f"cannot decode video {path}: {err}") from None


def check_video(path: str | Path) -> VideoInfo:
    """A video's frame count and fps after the checks data_gen makes of every video before using it:
    it opens, has frames, and its last frame decodes. A :class:`VideoReadError` gives the reason
    (``empty file``, ``cannot open: ...``, ``truncated: ...``), without the path."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise VideoReadError("empty file")
    try:
        opened = open_video(path)
    except DecodeFailure as err:
        if err.truncated:  # the header parsed but the stream ends early
            raise VideoReadError(f"truncated: the stream ends before its last frame ({err})") from None
        raise VideoReadError(f"cannot open: {err}") from None
    if opened.num_frames == 0:
        raise VideoReadError("no video frames")
    try:
        decode(opened, [opened.num_frames - 1])
    except DecodeFailure as err:
        raise VideoReadError(f"truncated: the last of {opened.num_frames} frames does not decode ({err})") from None
    return VideoInfo(opened.num_frames, opened.fps)


@lru_cache(maxsize=65536)
def video_info(path: str | Path) -> VideoInfo:
    """Frame count and native fps of a video; raises :class:`VideoReadError` when unreadable."""
    opened = _reader(path)
    if opened.num_frames == 0:
        raise VideoReadError(f"video has no frames: {path}")
    return VideoInfo(opened.num_frames, opened.fps)


def count_frames(path: str | Path) -> int:
    """Number of decodable frames in a video; raises :class:`VideoReadError` when unreadable."""
    return video_info(path).num_frames


def _decoded(opened: Opened, path: str | Path, indices: list[int]) -> np.ndarray:
    if max(indices) >= opened.num_frames:
        raise VideoReadError(f"frame index {max(indices)} is beyond the {opened.num_frames} frames of {path}")
    try:
        return decode(opened, list(indices))
    except DecodeFailure as err:
        raise VideoReadError(f"cannot decode frames {indices} of {path}: {err}") from None


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """Decode exactly ``indices`` from a video as ``(len(indices), H, W, 3)`` uint8 RGB."""
    return _decoded(_reader(path), path, indices)


def clip_of(frames: np.ndarray, info: VideoInfo, indices: list[int]) -> Clip:
    """Decoded frames ``indices`` of a video described by ``info``, with their timing."""
    return Clip(frames, frame_metadata(info, indices, *frames.shape[1:3]))


def read_clip(path: str | Path, indices: list[int]) -> Clip:
    """Frames ``indices`` of a video and their timing, from one opening of the file."""
    opened = _reader(path)
    return clip_of(_decoded(opened, path, indices), VideoInfo(opened.num_frames, opened.fps), indices)
