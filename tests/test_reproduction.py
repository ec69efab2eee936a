"""The end-to-end toy reproduction and the ablation notebooks run at their reduced setting."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def test_toy_reproduction_quick(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/toy_reproduction.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=1500, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"tpo_minus_base=-?\d+\.\d\d tpo_minus_sft_self=-?\d+\.\d\d ci_low=-?\d+\.\d\d", last)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["seeds"]) == {"0", "1"}
    arms = {"base", "sft_self", "dpo", "tpo", "tpo_alpha0"}
    for seed in results["seeds"].values():
        assert arms <= set(seed)
        pairs = seed["pairs"]
        # the unfiltered set holds every non-identical pair, the post-filter keeps a subset of them
        assert 0 < pairs["tpo"] == pairs["sft_self"] == pairs["tpo_alpha0"] <= pairs["dpo"]
        for arm in arms:
            for scoring in ("generate", "likelihood"):
                assert all(0.0 <= v <= 1.0 for v in seed[arm][scoring].values())
        assert 0.0 <= seed["base"]["window"]["likelihood"] <= 1.0
    # each seed trained its own base model
    assert results["seeds"]["0"]["models"]["base"] != results["seeds"]["1"]["models"]["base"]
    gain, low, high = results["differences"]["tpo-sft_self/likelihood"]
    assert low <= gain <= high
    assert last.endswith(f"tpo_minus_sft_self={100 * gain:.2f} ci_low={100 * low:.2f}")
    table = (tmp_path / "table.md").read_text()
    assert "+ TPO, α = 0" in table and "likelihood scoring" in table and "generation" in table and "± " in table
    assert len(results["frames_curve"]["tpo"]) == len(results["frames_curve"]["frames"]) == 2
    for name in ("frames_curve.png", "niah_base.png", "niah_tpo.png"):
        assert (tmp_path / name).stat().st_size > 5_000
    # every arm was a real `tpo fit` run with its own TensorBoard logs and export
    assert len(list(tmp_path.glob("seed-0/*/**/export/config.json"))) == 4
    assert (tmp_path / "seed-0/data-filtered/manifest.json").exists()


def _execute(name: str, out: Path) -> None:
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    params = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    # papermill's convention: a cell after the parameters cell overrides them
    notebook.cells.insert(params + 1, nbformat.v4.new_code_cell(f"QUICK = True\nOUT = {str(out)!r}"))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()


def test_mix_ratio_notebook_executes(tmp_path):
    _execute("ablation_mix_ratio.ipynb", tmp_path)
    assert (tmp_path / "ablation_mix_ratio.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "ablation_mix_ratio.json").read_text())
    assert [r["irrelevant_share"] for r in saved["runs"].values()] == [1.0, 0.8, 0.5, 0.2, 0.0]
    assert all(r["reward_accuracy"] is not None for r in saved["runs"].values())  # read back from TensorBoard


def test_dataset_size_notebook_executes(tmp_path):
    _execute("ablation_dataset_size.ipynb", tmp_path)
    assert (tmp_path / "ablation_dataset_size.png").stat().st_size > 10_000
    runs = json.loads((tmp_path / "ablation_dataset_size.json").read_text())["runs"]
    pairs = [r["pairs"] for r in runs.values()]
    assert pairs == sorted(pairs) and len(set(pairs)) == 3
