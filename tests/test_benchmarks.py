"""The benchmark scripts run (their timings are reported in notes, never asserted)."""

import json
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


def test_gpu_check_dry_run_names_every_part():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--dry-run"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.split("==== gpu_check summary ====")[1]
    parts = dict(line.split(": ", 1) for line in summary.strip().splitlines()[1:])
    assert list(parts) == ["nan_repro", "mfu", "sharded_demo", "dpo_step"]
    repro = json.loads(parts["nan_repro"])
    assert repro["length"] % 128 == 64 and repro["sdpa_no_cudnn"]["finite"] and repro["sdpa"]["finite"]
    assert json.loads(parts["mfu"])["step_s"] > 0
    assert "demo_fsdp.yaml" in parts["sharded_demo"] and "ours_flex" in parts["dpo_step"]


def test_eval_prefetch_benchmark_quick():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/eval_prefetch.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"items_per_s_before=\d+\.\d+ items_per_s_after=\d+\.\d+ speedup=\d+\.\d+", last)


def test_decode_benchmark_quick():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/decode.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(r"pyav_vs_decord=\d+\.\d+,\d+\.\d+,\d+\.\d+", done.stdout.strip().splitlines()[-1])
