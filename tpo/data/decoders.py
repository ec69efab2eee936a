"""Video decoders behind one interface: a video's frame count and fps, and exact frames by index.

- ``decord`` (the default where it installs): its wheels are x86_64 only, and its last release was in 2021.
- ``pyav`` (everywhere, aarch64 GH200/GB200 nodes included): PyAV's wheels bundle FFmpeg, so it needs
  no system libraries (torchcodec, the other candidate, needs a system FFmpeg of a matching version).
  Frame ``i`` is the ``i``-th frame in presentation order: the packets' timestamps are read once
  (no decoding), and frames are decoded from the keyframe before each wanted one.

``TPO_VIDEO_BACKEND=decord|pyav`` chooses one (default: decord when it imports, else PyAV); every
process of a run reads the same variable. Both decode with FFmpeg and convert to RGB the same way;
``tests/test_decoders.py`` checks their frames are equal pixel for pixel.
"""

from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from tpo.errors import ConfigError

BACKENDS = ("decord", "pyav")
ENV = "TPO_VIDEO_BACKEND"


class DecodeFailure(Exception):
    """A decoder's failure, its message cleaned of the library's trace; ``truncated`` when the
    stream ends before the frames its header promises."""

    def __init__(self, message: str, truncated: bool = False):
        super().__init__(message)
        self.truncated = truncated


@dataclass
class Opened:
    backend: str
    num_frames: int
    fps: float  # 0 when the container gives none
    handle: object


def backend_name() -> str:
    """The backend this process decodes with (``$TPO_VIDEO_BACKEND``, else decord if it imports)."""
    name = os.environ.get(ENV, "").strip().lower()
    if not name:
        return "decord" if find_spec("decord") is not None else "pyav"
    if name not in BACKENDS:
        raise ConfigError(f"{ENV}={name!r} is not a video backend; choose from {list(BACKENDS)}")
    if name == "decord" and find_spec("decord") is None:
        raise ConfigError(f"{ENV}=decord, but decord is not installed (it has no wheel for this platform); "
                          f"use {ENV}=pyav")
    return name


# ---- decord ----------------------------------------------------------------------------------------

def _decord_message(err: Exception) -> str:
    """decord's first error line without its ``[time] file.cc:line:`` prefix."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(err).splitlines()[0])[:200]


def _decord_open(path: Path) -> Opened:
    import decord  # imported lazily: decord pulls in native libraries

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
    except Exception as err:  # decord raises its own DECORDError with a C++ trace
        message = _decord_message(err)
        raise DecodeFailure(message, truncated="av_read_frame" in message) from None
    return Opened("decord", len(reader), float(reader.get_avg_fps() or 0.0), reader)


def _decord_frames(opened: Opened, indices: list[int]) -> np.ndarray:
    try:
        return opened.handle.get_batch(list(indices)).asnumpy()
    except Exception as err:
        raise DecodeFailure(_decord_message(err)) from None


# ---- PyAV ------------------------------------------------------------------------------------------

@dataclass
class _Timeline:
    path: Path
    pts: list[int]  # presentation timestamp of frame i, in order
    keys: list[int]  # presentation timestamps of the keyframes, in order


def _av_message(err: Exception) -> str:
    """FFmpeg's reason ("Invalid data found when processing input"), without errno and path."""
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0] if str(err) else type(err).__name__
    return reason[:200]


def _pyav_open(path: Path) -> Opened:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeFailure("no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            pts, keys = [], []
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or packet.size == 0:  # the flush packet at the end
                    continue
                pts.append(stamp)
                if packet.is_keyframe:
                    keys.append(stamp)
            promised = stream.frames  # the container's frame count (0: it does not say)
    except (av.FFmpegError, OSError) as err:
        raise DecodeFailure(_av_message(err), truncated=isinstance(err, av.EOFError)) from None
    if promised and len(pts) < promised:
        raise DecodeFailure(f"the stream ends after {len(pts)} of its {promised} frames", truncated=True)
    return Opened("pyav", len(pts), fps, _Timeline(path, sorted(pts), sorted(keys)))


def _pyav_frames(opened: Opened, indices: list[int]) -> np.ndarray:
    """Frames at ``indices``: seek to the keyframe before a wanted frame, decode up to it, and seek
    again only when a keyframe lies between one wanted frame and the next."""
    import av

    timeline: _Timeline = opened.handle
    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(str(timeline.path)) as container:
            stream = container.streams.video[0]
            i = 0
            while i < len(wanted):
                target = timeline.pts[wanted[i]]
                container.seek(target, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is None or frame.pts < target:
                        continue
                    if frame.pts > target:
                        raise DecodeFailure(f"frame {wanted[i]} (pts {target}) is not in the decoded stream")
                    found[wanted[i]] = frame.to_ndarray(format="rgb24")
                    i += 1
                    if i == len(wanted) or _keyframe_between(timeline, target, timeline.pts[wanted[i]]):
                        break
                    target = timeline.pts[wanted[i]]
                else:
                    if i < len(wanted):
                        raise DecodeFailure(f"the stream ends before frame {wanted[i]}", truncated=True)
    except (av.FFmpegError, OSError) as err:
        raise DecodeFailure(_av_message(err)) from None
    return np.stack([found[i] for i in indices])


def _keyframe_between(timeline: _Timeline, after: int, upto: int) -> bool:
    """Whether seeking beats decoding on: a keyframe lies in ``(after, upto]``."""
    at = bisect.bisect_right(timeline.keys, after)
    return at < len(timeline.keys) and timeline.keys[at] <= upto


_OPEN = {"decord": _decord_open, "pyav": _pyav_open}
_FRAMES = {"decord": _decord_frames, "pyav": _pyav_frames}


def open_video(path: Path, backend: str | None = None) -> Opened:
    """Open ``path`` with ``backend`` (default: :func:`backend_name`); :class:`DecodeFailure` if it cannot."""
    return _OPEN[backend or backend_name()](path)


def decode(opened: Opened, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` of an opened video as ``(len(indices), H, W, 3)`` uint8 RGB."""
    return _FRAMES[opened.backend](opened, indices)
