"""The README's tour runs as written: its bash block, in a fresh folder, every command to the end."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # minutes: data_gen, a fit, evaluations and a notebook

# After the block: TensorBoard (started in the background by the tour) must answer before the script ends.
TENSORBOARD_ANSWERS = """
for i in $(seq 60); do
  python -c "import urllib.request; urllib.request.urlopen('http://localhost:6006', timeout=2)" 2>/dev/null && exit 0
  sleep 1
done
echo "tensorboard never answered" >&2; exit 1
"""


def tour_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## A tour on the built-in data"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_tour_block_is_the_loop_in_order():
    commands = [line for line in tour_block().splitlines() if line and not line.startswith("#")]
    order = ["data_gen.scripted_server", "write_clips", "tpo data run", "tpo fit", "tpo evaluate mcq",
             "tpo evaluate niah-make", "tpo evaluate niah ", "tensorboard", "notebooks/run.py"]
    assert [next(i for i, c in enumerate(commands) if step in c) for step in order] == list(range(len(order)))


def test_the_tour_runs_as_written(tmp_path):
    for folder in ("lightning_configs", "data_gen", "notebooks"):  # the repository's relative paths
        (tmp_path / folder).symlink_to(REPO / folder)
    script = tmp_path / "tour.sh"
    script.write_text("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
                      + tour_block() + TENSORBOARD_ANSWERS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    tour = tmp_path / "runs" / "tour"
    assert (tour / "pairs" / "preferences.jsonl").read_text().strip()
    assert (tour / "fit" / "lightning_logs" / "version_0" / "export" / "config.json").exists()
    summary = json.loads((tour / "eval" / "summary.json").read_text())
    assert summary["items"] == 32 and 0.0 <= summary["accuracy"] <= 1.0
    assert (tour / "niah-eval" / "niah_heatmap.png").stat().st_size > 1000
    assert (tour / "ablation" / "ablation_mix_ratio.png").stat().st_size > 10_000
    assert (tour / "ablation" / "ablation_mix_ratio.ipynb").exists()
