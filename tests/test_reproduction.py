"""The end-to-end toy reproduction and the ablation notebooks run at their reduced setting."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from notebooks.run import execute
from toy.base import ToyBaseConfig, recipe_name, shipped_base, shipped_config

REPO = Path(__file__).resolve().parents[1]
SHARE = (shipped_config() or {}).get("long_moment_share")
pytestmark = pytest.mark.slow  # minutes each: `-m "not slow"` leaves them out of a quick local run


@pytest.fixture(scope="module")
def toy_out(tmp_path_factory):
    """One work directory for the reproduction, the calibration worker and both notebooks: seed 0's
    base model, data_gen run, splits and base evaluation are built by whichever test needs them first
    and reused (the pipeline caches every stage), as they would be in one researcher's ``runs/``."""
    return tmp_path_factory.mktemp("toy")


def test_toy_reproduction_quick(toy_out):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/toy_reproduction.py"), "--quick", "--jobs", "2",
                           "--out", str(toy_out)], capture_output=True, text=True, timeout=1500, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    number = r"-?\d+\.\d\d"
    fields = ("tpo_minus_base", "tpo_minus_sft_self", "ci_low", "ci_high")
    assert re.fullmatch(" ".join(f"{k}={number}" for k in fields) + " seeds=2", last)
    seeds = {s: json.loads((toy_out / "seeds" / f"seed-{s}.json").read_text()) for s in (0, 1)}
    questions = sum(1 for line in (toy_out / "test-6" / "mcq.jsonl").read_text().splitlines() if line.strip())
    arms = {"base", "sft_self", "tpo", "tpo_alpha0", "tpo_nofilter"}
    for seed in seeds.values():
        assert set(seed["arms"]) == arms
        # the post-filter keeps a subset of the pairs; the unfiltered arm trains on as many
        assert 0 < seed["pairs"]["filtered"] <= seed["pairs"]["unfiltered"]
        for arm in arms:
            readout = seed["arms"][arm]
            assert all(0.0 <= readout[k] <= 1.0 for k in ("moment", "after", "before", "order"))
            assert len(readout["correct"]) == questions and set(readout["correct"]) <= {"0", "1"}
        assert 0.0 <= seed["arms"]["base"]["window"] <= 1.0
        assert set(seed["curves"]["tpo"]["frames"]) == {"8", "16", "32"}
    # one base for every seed: the committed one
    assert seeds[0]["base_model"] == seeds[1]["base_model"] == str(shipped_base())
    gains = [seeds[s]["arms"]["tpo"]["moment"] - seeds[s]["arms"]["sft_self"]["moment"] for s in (0, 1)]
    assert f"tpo_minus_sft_self={100 * sum(gains) / 2:.2f}" in last
    table = (toy_out / "table.md").read_text()
    assert "+ TPO, α = 0" in table and "no post-filter" in table and "Primary:" in table and "± " in table
    for name in ("frames_curve.png", "niah_base.png", "niah_tpo.png"):
        assert (toy_out / name).stat().st_size > 5_000
    # every arm was a real `tpo fit` run with its own TensorBoard logs and export
    assert len(list(toy_out.glob("seed-0/*/**/export/config.json"))) == 4
    assert (toy_out / "seed-0/data-filtered/manifest.json").exists()
    # the report alone is rebuilt from the seed files
    again = subprocess.run([sys.executable, str(REPO / "benchmarks/toy_reproduction.py"), "--quick", "--report",
                            "--out", str(toy_out)], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == last


def test_toy_calibration_worker_writes_one_seed_point(toy_out):
    # the committed base's own share: the base is loaded, not trained
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/toy_calibration.py"), "--quick", "--worker", "base",
                           "--seed", "0", "--share", str(SHARE), "--out", str(toy_out)], capture_output=True, text=True,
                          timeout=900, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    recipe = toy_out / "calibration" / "base" / f"recipe-{recipe_name(ToyBaseConfig())}"
    point = json.loads((recipe / f"seed-0-share-{SHARE}.json").read_text())
    assert point["seed"] == 0 and point["share"] == SHARE and point["base_model"] == str(shipped_base())
    assert all(0.0 <= point[k] <= 1.0 for k in ("moment", "window", "window_after", "window_before", "order",
                                                 "after_floor"))


def _execute(name: str, out: Path) -> None:
    executed = execute(REPO / "notebooks" / name, out, quick=True)  # what `python notebooks/run.py --quick` runs
    saved = nbformat.read(executed, as_version=4)
    assert any(c.get("outputs") for c in saved.cells if c.cell_type == "code")  # saved with its outputs


def test_mix_ratio_notebook_executes(toy_out):
    _execute("ablation_mix_ratio.ipynb", toy_out)
    assert (toy_out / "ablation_mix_ratio.png").stat().st_size > 10_000
    saved = json.loads((toy_out / "ablation_mix_ratio.json").read_text())
    assert [r["irrelevant_share"] for r in saved["runs"].values()] == [1.0, 0.8, 0.5, 0.2, 0.0]
    assert all(r["reward_accuracy"] is not None for r in saved["runs"].values())  # read back from TensorBoard


def test_dataset_size_notebook_executes(toy_out):
    _execute("ablation_dataset_size.ipynb", toy_out)
    assert (toy_out / "ablation_dataset_size.png").stat().st_size > 10_000
    runs = json.loads((toy_out / "ablation_dataset_size.json").read_text())["runs"]
    pairs = [r["pairs"] for r in runs.values()]
    assert pairs == sorted(pairs) and len(set(pairs)) == 3
