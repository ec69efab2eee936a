"""Built-in synthetic assets: tiny random models of real families and a world of moving shapes.

Configs name them with ``builtin:`` paths (``builtin:tiny-<family>``, ``builtin:demo``), which
:func:`tpo.builtin.resolve` turns into the paths built here (once, then cached).
"""

from __future__ import annotations

from pathlib import Path

from tpo.synthetic.tiny_models import build_once, build_tiny, cache_dir, tiny_model_path
from tpo.synthetic.world import write_preference_dataset

_DEMO_VERSION = "4"


def demo_dataset_path() -> Path:
    """The demo preference set, written once under the cache directory."""
    def build(tmp: Path) -> None:
        write_preference_dataset(tmp, num_videos=20, pairs_per_video=4, num_frames=32)

    return build_once(cache_dir() / f"demo-v{_DEMO_VERSION}", build, "preferences.jsonl") / "preferences.jsonl"


__all__ = ["build_once", "build_tiny", "cache_dir", "demo_dataset_path", "tiny_model_path",
           "write_preference_dataset"]
