"""``builtin:`` paths: the one place core code turns them into real paths.

- ``builtin:tiny-<family>``: a tiny random model of ``<family>`` (``tpo.synthetic.tiny_models``);
- ``builtin:demo``: the demo preference set (``preferences.jsonl`` beside its ``videos/``).

Each is built once on first use and cached (``$TPO_CACHE``, default ``~/.cache/tpo``). The builders
are imported only when a ``builtin:`` path is resolved, so core modules do not depend on them.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "builtin:"


def resolve(path: str | Path) -> Path | str:
    """Turn a ``builtin:`` path into a real one; any other path is returned unchanged."""
    text = str(path)
    if not text.startswith(PREFIX):
        return path
    from tpo.synthetic import demo_dataset_path
    from tpo.synthetic.tiny_models import BUILDERS, tiny_model_path

    name = text.removeprefix(PREFIX)
    if name == "demo":
        return demo_dataset_path()
    if name.startswith("tiny-") and name.removeprefix("tiny-") in BUILDERS:
        return tiny_model_path(name.removeprefix("tiny-"))
    options = [f"{PREFIX}demo"] + [f"{PREFIX}tiny-{f}" for f in BUILDERS]
    raise ValueError(f"unknown built-in asset {text!r}; available: {', '.join(options)}")
