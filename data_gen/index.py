"""Stage 1: find the videos and probe each one (frame count, fps, duration) with decord.

A file that cannot be opened, has no frames or whose last frame does not decode (a truncated
download) is reported with the reason and left out; the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_gen.cache import Outcome
from data_gen.config import fingerprint
from data_gen.runner import Job, StageRunner
from tpo.data.frames import VideoReadError, check_video
from tpo.errors import ConfigError, TPOError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")


@dataclass(frozen=True)
class Video:
    rel: str  # path relative to the videos folder: the record's `video` field
    path: Path
    num_frames: int
    fps: float
    duration_s: float
    identity: str  # changes when the file changes: part of every later cache key


def list_videos(root: str | Path) -> list[str]:
    """Relative paths of all video files under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise TPOError(f"videos folder not found: {root}")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def shard(rels: list[str], num_shards: int, shard_index: int) -> list[str]:
    """This shard's videos: every ``num_shards``-th of the sorted list, so shards differ by one video
    at most (all shards must see the same folder)."""
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    return sorted(rels)[shard_index::num_shards]


def probe(path: Path) -> dict:
    """``{num_frames, fps, duration_s}``; raises VideoReadError with the reason a video is unusable."""
    info = check_video(path)
    return {"num_frames": info.num_frames, "fps": info.fps,
            "duration_s": info.num_frames / info.fps if info.fps > 0 else 0.0}


def _probe_outcome(path: Path) -> Outcome:
    try:
        return Outcome(True, probe(path))
    except VideoReadError as err:
        return Outcome(False, reason=str(err))


def index_videos(root: str | Path, rels: list[str], runner: StageRunner) -> tuple[list[Video], list[dict]]:
    """Probe every video (cached by path, size and mtime); returns ``(videos, skipped)``."""
    root = Path(root)
    identities = {}
    jobs = []
    for rel in rels:
        stat = (root / rel).stat()
        identities[rel] = fingerprint(rel, stat.st_size, stat.st_mtime_ns)
        jobs.append(Job(rel, fingerprint("index", identities[rel]), root / rel))
    runner.run_batched(jobs, 1, lambda: lambda batch: [_probe_outcome(job.payload) for job in batch])
    videos, skipped = [], []
    for rel in rels:
        outcome = runner.outcomes[rel]
        if outcome.ok:
            videos.append(Video(rel, root / rel, identity=identities[rel], **outcome.value))
        else:
            skipped.append({"video": rel, "stage": "index", "reason": outcome.reason})
    return videos, skipped
