"""Tiny, randomly initialised models of the real video-LMM architectures, built offline and cached.

``build_tiny(family)`` builds one with the family's builder (:mod:`tpo.synthetic.tiny_builders`);
``tiny_model_path(family)`` saves one once under the cache directory and returns its path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from tpo.synthetic.tiny_builders import BUILDERS

_BUILD_VERSION = "5"  # bump when a builder or a chat template changes, so cached copies are rebuilt


def cache_dir() -> Path:
    """Where built-in assets (tiny models, the demo world) are cached: ``$TPO_CACHE`` or ~/.cache/tpo."""
    return Path(os.environ.get("TPO_CACHE", Path.home() / ".cache" / "tpo"))


def build_tiny(family: str, seed: int = 0):
    """A tiny random ``(model, processor)`` of ``family``, deterministic for a given seed."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for model family {family!r}; known: {sorted(BUILDERS)}")
    torch.manual_seed(seed)
    model, processor = BUILDERS[family]()
    return model.eval(), processor


def build_once(path: Path, build: Callable[[Path], object], done: str) -> Path:
    """``path``, made by ``build(tmp_dir)`` the first time (the file ``done`` marks it finished).

    A file lock makes processes started together (the ranks of a multi-process run) build it once:
    the others wait and then use it. The temporary directory is renamed into place, so a killed
    build never leaves a half-written ``path``.
    """
    if (path / done).exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not (path / done).exists():
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            build(tmp)
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
    return path


def tiny_model_path(family: str) -> Path:
    """Save the tiny model of ``family`` once under the cache directory and return its path."""
    def build(tmp: Path) -> None:
        model, processor = build_tiny(family)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return build_once(cache_dir() / f"tiny-{family}-v{_BUILD_VERSION}", build, "config.json")
