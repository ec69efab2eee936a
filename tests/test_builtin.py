"""``builtin:`` paths are resolved in one small place (tpo/builtin.py)."""

import pytest

from tpo.builtin import resolve

def test_resolve_builds_builtins_and_leaves_other_paths_alone(tmp_path):
    assert resolve(tmp_path) == tmp_path and resolve("org/model") == "org/model"
    assert (resolve("builtin:tiny-llava_onevision") / "config.json").is_file()
    assert resolve("builtin:demo").name == "preferences.jsonl"
    with pytest.raises(ValueError, match="unknown built-in asset 'builtin:tiny-gpt5'; available: builtin:demo"):
        resolve("builtin:tiny-gpt5")
