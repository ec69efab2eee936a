"""Progress in a log file: `tpo fit` with its output not on a terminal prints plain progress lines, and the fit
summary says how the global batch is made up."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tpo.progress import ProgressLog

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^step (\d+)/4  epoch \d+  loss -?\d+\.\d{4}  reward acc \d\.\d{3}  pairs/s \d+\.\d\d  "
                       r"ETA \d+:\d\d:\d\d$")


@pytest.fixture(scope="module")
def piped_fit(tmp_path_factory, pref_file):
    """4 optimizer steps of 2 accumulated batches (6 batches an epoch: validation after step 3), stdout to a pipe."""
    root = tmp_path_factory.mktemp("piped_fit")
    cmd = [sys.executable, "-m", "tpo", "fit", "--config", str(REPO / "lightning_configs/demo.yaml"),
           "--trainer.default_root_dir", str(root), "--data.path", str(pref_file), "--data.val_fraction", "0.25",
           "--trainer.max_steps", "4", "--trainer.accumulate_grad_batches", "2", "--progress.every_n_steps", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_fit_into_a_pipe_prints_a_progress_line_every_n_optimizer_steps(piped_fit):
    lines = piped_fit.splitlines()
    steps = [int(m[1]) for m in map(STEP_LINE.match, lines) if m]
    assert steps == [2, 4], "\n".join(lines)  # once per optimizer step, not per accumulated batch
    assert ("fit: step 0/4, global batch 8 pairs = 4 per device x 1 device(s) x 1 node(s) x 2 accumulated batch(es), "
            "a progress line every 2 steps") in lines
    validation = [line for line in lines if line.startswith("validation at step 3  loss ")]
    assert len(validation) == 1 and "reward acc" in validation[0]


def test_the_fit_summary_shows_how_the_global_batch_is_made_up(piped_fit):
    assert ("  global batch: 8 pairs = 4 per device x 1 device(s) x 1 node(s) x 2 accumulated batch(es)"
            in piped_fit.splitlines())


def fake_trainer(rank_zero: bool = True) -> SimpleNamespace:
    """What ProgressLog reads of a trainer: 4 steps of 2 pairs, at 4 pairs/s."""
    return SimpleNamespace(
        is_global_zero=rank_zero, estimated_stepping_batches=4, global_step=0, current_epoch=0, world_size=1,
        num_devices=1, num_nodes=1, accumulate_grad_batches=1,
        datamodule=SimpleNamespace(hparams=SimpleNamespace(batch_size=2)),
        callback_metrics={"train/loss": torch.tensor(0.5), "rewards/accuracy": torch.tensor(1.0),
                          "perf/samples_per_s": torch.tensor(4.0)})


def fit(trainer: SimpleNamespace) -> None:
    progress = ProgressLog(every_n_steps=2)
    progress.setup(trainer, None, "fit")
    progress.on_train_start(trainer, None)
    for trainer.global_step in range(1, 5):
        progress.on_train_batch_end(trainer, None, None, {"ids": ["a", "b"]}, trainer.global_step - 1)


@pytest.mark.parametrize("terminal,rank_zero", [(False, True), (True, True), (False, False)])
def test_progress_lines_only_from_rank_zero_and_not_on_a_terminal(monkeypatch, capsys, terminal, rank_zero):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    fit(fake_trainer(rank_zero))
    lines = capsys.readouterr().out.splitlines()
    if terminal or not rank_zero:
        assert lines == []
    else:  # the ETA: 2 steps of 2 pairs at 4 pairs/s
        assert lines[1:] == ["step 2/4  epoch 0  loss 0.5000  reward acc 1.000  pairs/s 4.00  ETA 0:00:01",
                             "step 4/4  epoch 0  loss 0.5000  reward acc 1.000  pairs/s 4.00  ETA 0:00:00"]
