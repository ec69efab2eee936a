"""Built-in synthetic assets: tiny random models of real families and a world of moving shapes.

Configs may name them with ``builtin:`` paths, resolved (and built once, then cached) here:

- ``builtin:tiny-<family>``: a tiny random model of ``<family>`` saved with ``save_pretrained``;
- ``builtin:demo``: the demo preference set (``preferences.jsonl`` beside its ``videos/``).
"""

from __future__ import annotations

from pathlib import Path

from tpo.synthetic.tiny_models import BUILDERS, build_once, build_tiny, cache_dir, tiny_model_path
from tpo.synthetic.world import write_preference_dataset

_DEMO_VERSION = "4"


def demo_dataset_path() -> Path:
    """The demo preference set, written once under the cache directory."""
    def build(tmp: Path) -> None:
        write_preference_dataset(tmp, num_videos=20, pairs_per_video=4, num_frames=32)

    return build_once(cache_dir() / f"demo-v{_DEMO_VERSION}", build, "preferences.jsonl") / "preferences.jsonl"


def resolve(path: str | Path) -> Path | str:
    """Turn a ``builtin:`` path into a real one; any other path is returned unchanged."""
    text = str(path)
    if not text.startswith("builtin:"):
        return path
    name = text.removeprefix("builtin:")
    if name == "demo":
        return demo_dataset_path()
    if name.startswith("tiny-") and name.removeprefix("tiny-") in BUILDERS:
        return tiny_model_path(name.removeprefix("tiny-"))
    options = ["builtin:demo"] + [f"builtin:tiny-{f}" for f in BUILDERS]
    raise ValueError(f"unknown built-in asset {text!r}; available: {', '.join(options)}")


__all__ = ["build_once", "build_tiny", "cache_dir", "demo_dataset_path", "resolve", "tiny_model_path",
           "write_preference_dataset"]
