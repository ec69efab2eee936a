"""Multi-process training for real: 2 CPU processes (gloo) through the `tpo` command, FSDP2 and DDP.

Every run here is `python -m tpo ...` in a subprocess; Lightning starts the second rank itself.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from step_log import read

from tpo.data.datamodule import PreferenceDataModule
from tpo.models import get_adapter
from tpo.module import TPOModule
from tpo.shared_prefix import shared_prefix_logps

REPO = Path(__file__).resolve().parents[1]
MODEL = "builtin:tiny-llava_onevision"
EPOCHS, STEPS_PER_EPOCH, CHECKPOINT_EVERY = 4, 6, 4  # 24 train pairs, a global batch of 4
pytestmark = pytest.mark.slow


# Set by any in-process distributed run earlier in the session; each run here must pick its own.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def _tpo(*args, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpo", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=timeout)


def _config(root: Path, pref_file, base: str = "demo_fsdp.yaml", **trainer) -> Path:
    """A copy of ``base`` on the small test set: checkpoints every few steps, every step logged to steps.jsonl."""
    config = yaml.safe_load((REPO / "lightning_configs" / base).read_text())
    config["trainer"].update(default_root_dir=str(root), max_epochs=EPOCHS, enable_progress_bar=False, **trainer)
    config["trainer"]["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": CHECKPOINT_EVERY, "save_top_k": -1, "save_last": "link"}},
        {"class_path": "step_log.StepLog", "init_args": {"path": str(root / "steps.jsonl")}},
    ]
    config["data"].update(path=str(pref_file), val_fraction=0.25, batch_size=4 // config["trainer"]["devices"])
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_dir(root: Path) -> Path:
    return root / "lightning_logs" / "version_0"


@pytest.fixture(scope="module")
def mcq_file(tmp_path_factory, pref_file):
    clips = sorted((pref_file.parent / "videos").glob("*.mp4"))[:2]
    path = tmp_path_factory.mktemp("mcq") / "mcq.jsonl"
    path.write_text("".join(json.dumps({"video": str(c), "question": "Which shape comes first?",
                                        "options": ["a red square", "a blue circle"], "answer": "A"}) + "\n"
                            for c in clips))
    return path


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, pref_file, mcq_file):
    """The sharded recipe on the small test set, uninterrupted, with an in-training MCQ evaluation."""
    root = tmp_path_factory.mktemp("fsdp")
    config = _config(root, pref_file)
    done = _tpo("fit", "--config", config, "--trainer.callbacks+=tpo.evaluate.MCQEval",
                "--trainer.callbacks.data", mcq_file, "--trainer.callbacks.every_n_steps", 12,
                "--trainer.callbacks.max_new_tokens", 4, cwd=root)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"root": root, "config": config, "done": done}


def test_readme_sharded_demo_finishes_and_its_export_scores_like_the_sharded_model(tmp_path):
    """`python -m tpo fit --config lightning_configs/demo_fsdp.yaml`, as the README gives it."""
    done = _tpo("fit", "--config", REPO / "lightning_configs" / "demo_fsdp.yaml", "--trainer.default_root_dir",
                tmp_path, "--trainer.callbacks+=step_log.FinalLogps", "--trainer.callbacks.path",
                tmp_path / "final_logps.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("TPO fit done") == 1 and "on 2 process(es)" in done.stdout  # rank 0 only
    assert "Traceback" not in done.stderr and "args parameter" not in done.stderr
    export = _run_dir(tmp_path) / "export"
    final = json.loads((tmp_path / "final_logps.json").read_text())
    adapter = get_adapter("llava_onevision")
    model, _ = adapter.load(str(export))
    dm = PreferenceDataModule("builtin:demo", val_fraction=0.15)
    dm.connect(TPOModule(str(export), "llava_onevision"))
    dm.setup("fit")
    batch = dm.collator([dm.val_set[i] for i in range(len(final["ids"]))])
    assert batch["ids"] == final["ids"]
    with torch.no_grad():
        exported = torch.cat(shared_prefix_logps(adapter, model.eval(), batch)[0])
    assert torch.allclose(exported, torch.tensor(final["logps"]), atol=1e-5)
    base, _ = adapter.load(MODEL)
    with torch.no_grad():
        base_logps = torch.cat(shared_prefix_logps(adapter, base.eval(), batch)[0])
        assert not torch.allclose(base_logps, exported, atol=1e-3)


def test_in_training_evaluation_runs_on_both_ranks(fsdp_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(_run_dir(fsdp_run["root"])))
    events.Reload()
    steps = [e.step for e in events.Scalars("eval/mcq/accuracy")]
    assert steps == [0, 12, 24]
    assert {"train/grad_norm", "perf/peak_memory_gib", "rewards/accuracy"} <= set(events.Tags()["scalars"])


def test_sharded_losses_match_one_process(fsdp_run, pref_file, tmp_path):
    config = _config(tmp_path, pref_file, base="demo.yaml")
    done = _tpo("fit", "--config", config, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    single, sharded = read(tmp_path / "steps.jsonl"), read(fsdp_run["root"] / "steps.jsonl")
    assert list(single) == list(sharded) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for step, expected in list(single.items())[:STEPS_PER_EPOCH + 2]:  # fp32 rounding grows with every step
        assert sorted(sharded[step]["ids"]) == sorted(expected["ids"])  # the same global batch
        assert sharded[step]["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6), step
    assert sharded[1]["rewards/chosen"] == 0.0 and sharded[1]["rewards/rejected"] == 0.0


def test_checkpoints_are_sharded_hold_no_reference_and_resume_exactly(fsdp_run, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    checkpoint = _run_dir(fsdp_run["root"]) / "checkpoints" / f"epoch=0-step={CHECKPOINT_EVERY}.ckpt"
    assert {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= {p.name for p in checkpoint.iterdir()}  # a shard per rank
    keys = list(FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata)
    weights = [k for k in keys if k.startswith("state_dict.")]
    assert weights and all(k.startswith("state_dict.policy.") for k in weights)
    assert not any("reference" in k for k in keys)

    done = _tpo("fit", "--config", fsdp_run["config"], "--trainer.default_root_dir", tmp_path,
                "--trainer.callbacks.path", tmp_path / "steps.jsonl", "--ckpt_path", checkpoint, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_continues(read(fsdp_run["root"] / "steps.jsonl"), read(tmp_path / "steps.jsonl"), CHECKPOINT_EVERY)


def test_sharded_checkpoint_consolidates_into_one_evaluable_file(fsdp_run, tmp_path):
    from tpo.evaluate.model import load_for_eval

    sharded = _run_dir(fsdp_run["root"]) / "checkpoints" / f"epoch=0-step={CHECKPOINT_EVERY}.ckpt"
    with pytest.raises(ValueError, match="consolidate_checkpoint"):
        load_for_eval(str(sharded), dtype=torch.float32, device="cpu")
    one_file = tmp_path / "step4.ckpt"
    done = subprocess.run([sys.executable, "-m", "lightning.fabric.utilities.consolidate_checkpoint", str(sharded),
                           "--output_file", str(one_file)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, model, _ = load_for_eval(str(one_file), dtype=torch.float32, device="cpu")  # strict: every policy weight
    base, _ = get_adapter("llava_onevision").load(MODEL)
    assert any(not torch.equal(p, base.state_dict()[k]) for k, p in model.state_dict().items())


def _assert_continues(uninterrupted: dict, resumed: dict, after: int) -> None:
    """The resumed run trains exactly the uninterrupted run's remaining steps, with its losses."""
    assert list(resumed) == [s for s in uninterrupted if s > after]
    for step, row in resumed.items():
        assert row["ids"] == uninterrupted[step]["ids"], step  # no pair skipped or trained twice
        assert row["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-6, abs=1e-6), step


def test_killed_run_resumes_at_the_next_batch(fsdp_run, tmp_path):
    """SIGKILL both ranks mid-epoch, then resume from the last checkpoint."""
    steps = tmp_path / "steps.jsonl"
    command = [sys.executable, "-m", "tpo", "fit", "--config", str(fsdp_run["config"]),
               "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks.path", str(steps)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    kill_after = 2 * CHECKPOINT_EVERY + 2  # the step-8 checkpoint (mid second epoch) is written
    deadline = time.monotonic() + 300
    while not (steps.exists() and max(read(steps), default=0) >= kill_after):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(read(steps))
    assert killed_at < EPOCHS * STEPS_PER_EPOCH

    last = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    resumed_log = tmp_path / "resumed.jsonl"
    done = _tpo("fit", "--config", fsdp_run["config"], "--trainer.default_root_dir", tmp_path / "resumed",
                "--trainer.callbacks.path", resumed_log, "--ckpt_path", last, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    uninterrupted, resumed = read(fsdp_run["root"] / "steps.jsonl"), read(resumed_log)
    resumed_from = min(resumed) - 1
    assert resumed_from % CHECKPOINT_EVERY == 0 and resumed_from % STEPS_PER_EPOCH != 0  # mid-epoch
    assert resumed_from <= killed_at
    _assert_continues(uninterrupted, resumed, resumed_from)


def test_precompute_ref_on_two_processes_matches_one_and_starts_at_zero_rewards(pref_file, tmp_path):
    files = {}
    for base in ("demo_fsdp.yaml", "demo.yaml"):
        root = tmp_path / base.removesuffix(".yaml")
        files[base] = root / "ref.json"
        done = _tpo("precompute-ref", "--config", _config(root, pref_file, base=base),
                    "--model.reference_logps", files[base], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        assert done.stdout.count("records written") == 1
    two, one = (json.loads(files[b].read_text()) for b in ("demo_fsdp.yaml", "demo.yaml"))
    assert two["model"] == one["model"] and two["entries"].keys() == one["entries"].keys() and len(one["entries"]) == 32
    for rid, entry in one["entries"].items():
        assert two["entries"][rid]["logps"] == pytest.approx(entry["logps"], rel=1e-5, abs=1e-4)

    root = tmp_path / "fit"
    done = _tpo("fit", "--config", _config(root, pref_file), "--model.reference_logps", files["demo_fsdp.yaml"],
                "--trainer.max_steps", 1, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    first = read(root / "steps.jsonl")[1]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0


def test_bf16_mixed_sharded_qwen_computes_its_reference_file_and_starts_at_zero_rewards(pref_file, tmp_path):
    settings = ["--config", _config(tmp_path, pref_file, precision="bf16-mixed"), "--model.family", "qwen2_5_vl",
                "--model.model_path", "builtin:tiny-qwen2_5_vl", "--model.reference_logps", tmp_path / "ref.json"]
    done = _tpo("precompute-ref", *settings, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    done = _tpo("fit", *settings, "--trainer.max_steps", 2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    first = read(tmp_path / "steps.jsonl")[1]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert (tmp_path / "ref.json").exists()


@pytest.mark.parametrize("lora", [None, "{r: 4, alpha: 8}"])
def test_ddp_fit_and_validate(pref_file, tmp_path, lora):
    config = _config(tmp_path, pref_file, base="demo.yaml", strategy="ddp", devices=2)
    done = _tpo("fit", "--config", config, "--trainer.max_epochs", 1, *(["--model.lora", lora] if lora else []),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("TPO fit done") == 1 and "on 2 process(es)" in done.stdout
    assert (_run_dir(tmp_path) / "export" / "config.json").exists()
    checkpoint = next((_run_dir(tmp_path) / "checkpoints").glob("epoch=0-step=*.ckpt"))
    done = _tpo("validate", "--config", config, "--ckpt_path", checkpoint, *(["--model.lora", lora] if lora else []),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "val/rewards/accuracy" in done.stdout


def test_bad_records_print_one_message_and_exit_2(pref_file, tmp_path):
    lines = pref_file.read_text().splitlines()
    record = json.loads(lines[1])
    record["frame_indices"] = [0, 999]
    bad = tmp_path / "prefs.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps(record)] + lines[2:]) + "\n")
    (tmp_path / "videos").symlink_to(pref_file.parent / "videos")
    done = _tpo("fit", "--config", _config(tmp_path, pref_file), "--data.path", bad, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("bad preference record") == 1 and "frame index 999 is beyond" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_from_a_sharded_checkpoint(fsdp_run, tmp_path):
    checkpoint = _run_dir(fsdp_run["root"]) / "checkpoints" / "last.ckpt"
    done = _tpo("validate", "--config", fsdp_run["config"], "--trainer.default_root_dir", tmp_path,
                "--ckpt_path", checkpoint, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("val/rewards/accuracy") == 1  # one table, from rank 0


@pytest.mark.parametrize("scoring", ["generate", "likelihood"])
def test_evaluation_at_start_is_the_first_sharded_forward_and_training_follows(pref_file, mcq_file, tmp_path, scoring):
    """No validation set and a live reference: MCQEval's answers are the sharded models' first forward.
    Under inference_mode FSDP2 would keep inference tensors that training cannot update; generation
    would reach the vision blocks before the root module."""
    done = _tpo("fit", "--config", _config(tmp_path, pref_file), "--data.val_fraction", 0, "--trainer.max_steps", 2,
                "--trainer.callbacks+=tpo.evaluate.MCQEval", "--trainer.callbacks.data", mcq_file,
                "--trainer.callbacks.scoring", scoring, "--trainer.callbacks.max_new_tokens", 2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert list(read(tmp_path / "steps.jsonl")) == [1, 2]


def test_a_nan_gradient_on_one_rank_skips_that_step_on_every_rank(pref_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = tmp_path / "poison.jsonl"
    done = _tpo("fit", "--config", _config(tmp_path, pref_file), "--trainer.max_steps", 5,
                "--trainer.callbacks+=step_log.PoisonGradient", "--trainer.callbacks.path", log,
                "--trainer.callbacks.steps", "[3]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "skipped optimizer steps (non-finite gradient norm): 1" in done.stdout
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["step"], r["rank"]) for r in rows) == [(s, r) for s in range(1, 6) for r in (0, 1)]
    assert all(r["finite"] for r in rows)
    trained = [r for r in rows if r["step"] > 1]  # step 1 runs at the warm-up's learning rate of 0
    assert all(r["changed"] == (r["step"] != 3) for r in trained), rows  # both ranks skipped step 3, only it
    events = EventAccumulator(str(_run_dir(tmp_path)))
    events.Reload()
    assert [e.value for e in events.Scalars("train/skipped_steps")] == [0, 0, 1, 1, 1]


def test_non_finite_gradients_in_a_row_stop_with_one_message(pref_file, tmp_path):
    done = _tpo("fit", "--config", _config(tmp_path, pref_file), "--trainer.max_steps", 8,
                "--model.max_consecutive_skips", 3, "--trainer.callbacks+=step_log.PoisonGradient",
                "--trainer.callbacks.path", tmp_path / "poison.jsonl", "--trainer.callbacks.steps", "[2, 3, 4, 5]",
                cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-4000:]
    assert done.stderr.count("error: the global gradient norm was not finite at 3 optimizer steps in a row") == 1
    assert "up to step 3" in done.stderr and "Traceback" not in done.stderr


def test_the_strategy_timeout_bounds_a_wait_in_a_collective(pref_file, tmp_path):
    start = time.monotonic()
    done = _tpo("fit", "--config", _config(tmp_path, pref_file), "--trainer.max_steps", 2,
                "--trainer.strategy.init_args.timeout_s", 30, "--trainer.callbacks+=step_log.Stall",
                "--trainer.callbacks.seconds", 400, cwd=tmp_path, timeout=600)
    assert done.returncode != 0
    assert time.monotonic() - start < 300, "the run waited for the stalled rank"
    assert "Timed out waiting 30000ms" in done.stderr  # gloo's words: the setting reached the process group


# Gemma 4's own masks on the packed row passed this test too (78 s for both families); only Qwen3.5 runs in
# CI to keep it under 30 minutes: its two-row layout changes what each rank's batch holds.
@pytest.mark.parametrize("family", ["qwen3_5"])
def test_sharded_families_with_their_own_layout_or_masks_match_one_process(pref_file, tmp_path, family):
    """Qwen3.5 trains two rows per pair (recurrent layers): under FSDP2 on 2 processes it gives the single
    process's losses, from zero rewards."""
    model = ["--model.family", family, "--model.model_path", f"builtin:tiny-{family}", "--trainer.max_steps", 3]
    steps = {}
    for base in ("demo_fsdp.yaml", "demo.yaml"):
        root = tmp_path / base.removesuffix(".yaml")
        done = _tpo("fit", "--config", _config(root, pref_file, base=base), *model, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        steps[base] = read(root / "steps.jsonl")
    if family == "qwen3_5":
        assert "pair layout: two_pass" in done.stdout
    sharded, single = steps["demo_fsdp.yaml"], steps["demo.yaml"]
    assert list(sharded) == list(single) == [1, 2, 3]
    for step, expected in single.items():
        assert sorted(sharded[step]["ids"]) == sorted(expected["ids"])
        assert sharded[step]["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6), step
    assert sharded[1]["rewards/chosen"] == 0.0 and sharded[1]["rewards/rejected"] == 0.0


def test_ddp_trains_llava_next_video_whose_video_path_leaves_weights_unused(pref_file, tmp_path):
    """LLaVA-NeXT-Video's ``image_newline`` serves images only: were it trainable, DDP (which expects a gradient
    for every trainable parameter) would stop at step 2."""
    config = _config(tmp_path, pref_file, base="demo.yaml", strategy="ddp", devices=2)
    done = _tpo("fit", "--config", config, "--model.family", "llava_next_video",
                "--model.model_path", "builtin:tiny-llava_next_video", "--trainer.max_steps", 3, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert list(read(tmp_path / "steps.jsonl")) == [1, 2, 3]
