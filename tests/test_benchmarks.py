"""The benchmark scripts run (their timings are reported in notes, never asserted)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dpo_step_benchmark_quick():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/dpo_step.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_naive=\d+\.\d+ memory_vs_naive=\d+\.\d+", lines[-1])
    assert any(line.startswith("naive") for line in lines) and any(line.startswith("ours ") for line in lines)
