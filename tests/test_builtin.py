"""``builtin:`` paths are resolved in one small place; core code never imports the builders."""

import subprocess
import sys

import pytest

from tpo.builtin import resolve

CORE = ["tpo.module", "tpo.cli", "tpo.data.datamodule", "tpo.reference", "tpo.models", "tpo.evaluate.mcq",
        "tpo.evaluate.model", "data_gen.pipeline"]


def test_core_modules_do_not_import_the_synthetic_builders():
    code = f"import sys; import {', '.join(CORE)}; print(sorted(m for m in sys.modules if m.startswith('tpo.synthetic')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_resolve_builds_builtins_and_leaves_other_paths_alone(tmp_path):
    assert resolve(tmp_path) == tmp_path and resolve("org/model") == "org/model"
    assert (resolve("builtin:tiny-llava_onevision") / "config.json").is_file()
    assert resolve("builtin:demo").name == "preferences.jsonl"
    with pytest.raises(ValueError, match="unknown built-in asset 'builtin:tiny-gpt5'; available: builtin:demo"):
        resolve("builtin:tiny-gpt5")
