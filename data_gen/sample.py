"""Stage 2: the ``num_frames`` frames of each video that generation *and* training use."""

from __future__ import annotations

from tpo.data.frames import uniform_frame_indices

from data_gen.index import Video


def sample_frames(video: Video, num_frames: int) -> list[int]:
    """Uniformly spread frame indices; ValueError when the video has fewer frames than that."""
    if video.num_frames < num_frames:
        raise ValueError(f"too few frames: {video.num_frames}, fewer than num_frames={num_frames}")
    return uniform_frame_indices(video.num_frames, num_frames)
