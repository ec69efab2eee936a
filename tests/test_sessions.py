"""A fit over several sessions, through `python -m tpo fit` in subprocesses, on 1 and 2 processes.

A resumed session goes on in its run's folder, with its TensorBoard curves and its last.ckpt, and deletes or
overwrites no checkpoint of an earlier session; Ctrl-C and SIGTERM stop a fit after a step with a checkpoint,
the command that resumes from it, and the status a shell gives the signal.
"""

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from step_log import read

REPO = Path(__file__).resolve().parents[1]
EVERY = 4  # steps between checkpoints; an epoch is 6 steps (24 training pairs, a global batch of 4)
PROCESSES = [pytest.param("demo.yaml", id="1-process"), pytest.param("demo_fsdp.yaml", id="2-processes")]
# Set by any in-process distributed run earlier in the session; each run here must pick its own.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def _fit(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpo", "fit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=_env(), timeout=600)


def _config(root: Path, pref_file, base: str) -> Path:
    """The recipe ``base`` on the small test set, with its own ModelCheckpoint saving every EVERY steps, and
    every step logged to steps.jsonl."""
    config = yaml.safe_load((REPO / "lightning_configs" / base).read_text())
    config["trainer"].update(default_root_dir=str(root), max_epochs=4, enable_progress_bar=False)
    (checkpoint,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(".ModelCheckpoint")]
    checkpoint["init_args"]["every_n_train_steps"] = EVERY
    config["trainer"]["callbacks"].append(
        {"class_path": "step_log.StepLog", "init_args": {"path": str(root / "steps.jsonl")}})
    config["data"].update(path=str(pref_file), val_fraction=0.25, batch_size=4 // config["trainer"]["devices"])
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fingerprint(checkpoint: Path) -> str:
    """The contents of a checkpoint file, or of a sharded checkpoint's folder."""
    files = sorted(checkpoint.rglob("*")) if checkpoint.is_dir() else [checkpoint]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.is_file())).hexdigest()


def _checkpoints(folder: Path) -> dict[str, str]:
    return {p.name: _fingerprint(p) for p in folder.iterdir() if not p.is_symlink()}


def _logged_steps(run: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_every_checkpointing_recipe_keeps_a_linked_last_checkpoint():
    for recipe in sorted((REPO / "lightning_configs").glob("*.yaml")):
        trainer = yaml.safe_load(recipe.read_text())["trainer"]
        if trainer.get("enable_checkpointing") is False:  # toy_tpo.yaml: one-epoch arms, rerun whole
            continue
        checkpoints = [c["init_args"] for c in trainer.get("callbacks", []) if c["class_path"].endswith("Checkpoint")]
        assert [c.get("save_last") for c in checkpoints] == ["link"], recipe.name


@pytest.mark.slow
@pytest.mark.parametrize("base", PROCESSES)
def test_a_resumed_fit_goes_on_in_its_run_and_keeps_the_earlier_checkpoints(base, pref_file, tmp_path):
    config = _config(tmp_path, pref_file, base)
    run = tmp_path / "lightning_logs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    first = _fit("--config", config, "--trainer.max_steps", 2 * EVERY, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    earlier = _checkpoints(run / "checkpoints")
    assert list(earlier) == [f"epoch=1-step={2 * EVERY}.ckpt"]  # top-1: the session removed its own step 4

    # from last.ckpt, which links to that checkpoint: Lightning would delete it as this session saves its own
    done = _fit("--config", config, "--trainer.max_steps", 4 * EVERY, "--ckpt_path", last, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "dirpath has changed" not in done.stderr and "exists and is not empty" not in done.stderr
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]
    assert _logged_steps(run) == list(range(4 * EVERY))  # one set of curves, the second session's after the first's
    now = _checkpoints(run / "checkpoints")
    assert now.items() >= earlier.items() and set(now) == {*earlier, f"epoch=2-step={4 * EVERY}.ckpt"}

    # a session that saves no checkpoint of its own: Lightning would write its last one through the link
    earlier = _checkpoints(run / "checkpoints")
    done = _fit("--config", config, "--trainer.max_steps", 4 * EVERY + 2, "--ckpt_path", last, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert _checkpoints(run / "checkpoints") == earlier and os.readlink(last) == f"epoch=2-step={4 * EVERY}.ckpt"


def _wait_for_step(proc: subprocess.Popen, steps: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while not (steps.exists() and max(read(steps), default=0) >= step):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be signalled"
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` still runs (zombies aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum,to_group,base", [
    pytest.param(signal.SIGINT, True, "demo.yaml", id="ctrl-c-1-process"),
    pytest.param(signal.SIGTERM, True, "demo.yaml", id="sigterm-1-process"),
    pytest.param(signal.SIGINT, True, "demo_fsdp.yaml", id="ctrl-c-2-processes"),
    pytest.param(signal.SIGTERM, False, "demo_fsdp.yaml", id="sigterm-to-rank-0-of-2-processes"),
])
def test_a_signal_stops_a_fit_after_a_step_with_a_checkpoint_and_the_command_that_resumes(
        signum, to_group, base, pref_file, tmp_path):
    steps, run = tmp_path / "steps.jsonl", tmp_path / "lightning_logs" / "version_0"
    args = ["fit", "--config", str(_config(tmp_path, pref_file, base)), "--trainer.max_epochs", "1",
            "--trainer.callbacks+=step_log.Slow", "--trainer.callbacks.seconds", "0.3"]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tpo", *args], cwd=tmp_path, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        _wait_for_step(proc, steps, 1)
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        status = proc.wait(timeout=300)
        deadline = time.monotonic() + 60
        while _group_alive(proc.pid):
            assert time.monotonic() < deadline, "a rank is still running"
            time.sleep(0.1)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert status == 128 + signum, stderr[-4000:]

    stopped = max(read(steps))
    assert stopped < 6
    checkpoint = run / "checkpoints" / f"epoch=0-step={stopped}-interrupted.ckpt"
    assert checkpoint.exists() and os.readlink(run / "checkpoints" / "last.ckpt") == checkpoint.name
    command = shlex.join(["python", "-m", "tpo", *args, "--ckpt_path", str(checkpoint)])
    assert f"{signal.Signals(signum).name}: stopped after step {stopped}; to resume: {command}" in stderr.splitlines()

    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True, cwd=tmp_path,
                          env=_env(), timeout=600)
    assert done.returncode == 0 and "dirpath has changed" not in done.stderr, done.stderr[-4000:]
    rows = [json.loads(line) for line in steps.read_text().splitlines()]
    assert [r["step"] for r in rows if r["rank"] == 0] == list(range(1, 7))  # each step trained once
    assert [p.name for p in run.parent.iterdir()] == ["version_0"] and _logged_steps(run) == list(range(6))


def test_the_resume_command_replaces_an_earlier_checkpoint(monkeypatch):
    from tpo.resume import resume_command

    monkeypatch.setattr(sys, "argv", ["/venv/bin/tpo"])
    argv = ["fit", "--config", "my run.yaml", "--ckpt_path", "a.ckpt", "--ckpt_path=b.ckpt", "--model.beta", "0.2"]
    assert resume_command(argv, "c.ckpt") == "tpo fit --config 'my run.yaml' --model.beta 0.2 --ckpt_path c.ckpt"


def test_a_deferred_signal_is_kept_for_later_and_a_second_one_stops_at_once():
    from tpo.clean_exit import StopSignals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals() as signals:
        signals.deferred = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.status == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert signals.status == 143  # the first signal decides
    assert {s: signal.getsignal(s) for s in before} == before
