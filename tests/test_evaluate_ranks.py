"""Evaluation across processes for real: ``torchrun --nproc_per_node 2 -m tpo.evaluate`` on gloo gives
the predictions one process gives, and resumes across process counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpo.evaluate.ranks import Ranks, all_done, from_launcher, merge

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def write_items(videos: Path, path: Path) -> Path:
    clips = sorted(videos.glob("*.mp4"))
    rows = [{"id": f"q{i}", "video": clips[i % len(clips)].name, "question": f"Question {i}: which shape is first?",
             "options": ["a red square", "a blue circle", "a green star"], "answer": i % 3,
             "frame_indices": [0, 5, 10, 15][: 2 + i % 3]} for i in range(7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evaluate_in_processes(data: Path, videos: Path, out: Path, processes: int,
                          *extra: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "tpo.evaluate"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "tpo.evaluate"]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    # batch size 1: a rank's batches hold other items than one process's, and padding may move a logit
    args = ["mcq", "--benchmark", "jsonl", "--data", data, "--videos", videos, "--out", out, "--model",
            "builtin:tiny-llava_onevision", "--dtype", "float32", "--device", "cpu", "--batch-size", "1",
            "--max-new-tokens", "6", *extra]
    return subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_predict_what_one_does_and_resume(raw_videos, tmp_path):
    data = write_items(raw_videos, tmp_path / "items.jsonl")
    one = evaluate_in_processes(data, raw_videos, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    partial = evaluate_in_processes(data, raw_videos, tmp_path / "two", 2, "--limit", "3")
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert [r["id"] for r in _rows(tmp_path / "two")] == ["q0", "q1", "q2"]
    two = evaluate_in_processes(data, raw_videos, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")  # same rows, in the benchmark's order
    assert not list((tmp_path / "two").glob("predictions.rank*"))
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two")]
    assert summaries[1]["processes"] == 2 and summaries[0]["processes"] == 1
    assert summaries[0]["correct"] == summaries[1]["correct"] and summaries[1]["items"] == 7
    assert two.stdout.count("predictions:") == 1  # rank 0 alone reports


def test_rank_files_of_a_killed_run_are_done_and_merged_in_order(tmp_path):
    """A run killed mid-way leaves rank files; any later run counts them done and merges them."""
    (tmp_path / "predictions.rank1.jsonl").write_text('{"id": "b", "x": 1}\n{"id": "d", "x": 2}\n{"id": "e"')
    (tmp_path / "predictions.jsonl").write_text('{"id": "a", "x": 0}\n')
    assert set(all_done(tmp_path)) == {"a", "b", "d"}  # the cut last line is not done
    merge(tmp_path, ["d", "c", "b", "a"])
    assert [json.loads(line)["id"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()] == [
        "d", "b", "a"]
    assert not list(tmp_path.glob("predictions.rank*"))
    assert Ranks(1, 3).share(list("abcdefg")) == ["b", "e"]


def test_ranks_are_read_from_torchrun_or_srun(monkeypatch):
    for name in [*LAUNCH_VARIABLES, "GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"]:
        monkeypatch.delenv(name, raising=False)
    srun = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NAME": "eval",
            "SLURM_NODELIST": "node[1-2]", "SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2"}
    for name, value in srun.items():
        monkeypatch.setenv(name, value)
    assert from_launcher() == Ranks()  # python in a batch script, not started by srun: one process
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert from_launcher() == Ranks(3, 4, 1)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "1234", "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "x"}.items():
        monkeypatch.setenv(name, value)
    assert from_launcher() == Ranks(1, 2, 1)  # torchrun's variables win
