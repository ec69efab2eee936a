"""Decoding speed of the two video backends (tpo.data.decoders), measured in one run.

1. 32 frames at a record's indices (segment centres) from H.264 clips of 10 s, 3 min and 20 min
   (320x180, 30 fps, B-frames, a keyframe every 2 s): opening the file (each backend indexes its
   packets) and decoding, as ``read_clip`` does for every training example.
2. Many short files opened one after another (200 clips of 2 s, 8 frames each), the pattern of
   dmlc/decord#280 (``VideoReader`` creation slowing down after many videos).

    python benchmarks/decode.py           # the table in the README
    python benchmarks/decode.py --quick   # 10 s and 30 s clips, 20 short files (what the tests run)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from tpo.clean_exit import run_and_exit
from tpo.data.decoders import BACKENDS, decode, open_video
from tpo.data.frames import uniform_frame_indices


def write_h264(path: Path, seconds: float, width: int = 320, height: int = 180, fps: int = 30) -> None:
    """Moving gradients and sparse noise: every frame differs, as in real footage."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bf": "3", "g": str(2 * fps), "crf": "26", "preset": "ultrafast"}
        for t in range(int(seconds * fps)):
            image = np.stack([(x + 5 * t) % 256, (y + 3 * t) % 256, (x + y + 7 * t) % 256], -1).astype(np.uint8)
            image[::16, ::16] = rng.integers(0, 256, image[::16, ::16].shape, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _clip_seconds(path: Path, backend: str, frames: int = 32) -> float:
    started = time.perf_counter()
    opened = open_video(path, backend)
    decode(opened, uniform_frame_indices(opened.num_frames, frames))
    return time.perf_counter() - started


def _many_files_seconds(paths: list[Path], backend: str) -> float:
    started = time.perf_counter()
    for path in paths:
        opened = open_video(path, backend)
        decode(opened, uniform_frame_indices(opened.num_frames, 8))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    lengths = {"10 s": 10, "30 s": 30} if args.quick else {"10 s": 10, "3 min": 180, "20 min": 1200}
    short_files = 20 if args.quick else 200
    with tempfile.TemporaryDirectory() as root:
        clips = {name: Path(root) / f"clip_{s}s.mp4" for name, s in lengths.items()}
        for name, path in clips.items():
            write_h264(path, lengths[name])
        write_h264(Path(root) / "short.mp4", 2)
        shorts = []
        for i in range(short_files):  # distinct files, as a dataset has
            shorts.append(Path(root) / f"short_{i}.mp4")
            shorts[-1].write_bytes((Path(root) / "short.mp4").read_bytes())
        for backend in BACKENDS:  # warm-up: imports, file cache
            _clip_seconds(clips["10 s"], backend)
        rows = []
        for name, path in clips.items():
            times = {b: min(_clip_seconds(path, b) for _ in range(3)) for b in BACKENDS}
            rows.append((f"32 frames of a {name} clip", 32, times))
        times = {b: _many_files_seconds(shorts, b) for b in BACKENDS}
        rows.append((f"{short_files} short files, 8 frames each", 8 * short_files, times))
    print(f"{'':36}{'decord fr/s':>12}{'pyav fr/s':>12}{'pyav/decord':>13}")
    for label, frames, times in rows:
        print(f"{label:36}{frames / times['decord']:>12.1f}{frames / times['pyav']:>12.1f}"
              f"{times['decord'] / times['pyav']:>13.2f}")
    ratios = [times["decord"] / times["pyav"] for _, _, times in rows]
    print("pyav_vs_decord=" + ",".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    run_and_exit(main)
