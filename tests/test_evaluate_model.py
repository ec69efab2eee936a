"""Evaluating real (tiny) models: checkpoint loading, the CLI, and the in-training callback."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from tpo.data.datamodule import PreferenceDataModule
from tpo.evaluate import MCQEval
from tpo.evaluate.model import infer_family, load_for_eval
from tpo.module import TPOModule

MODEL = "builtin:tiny-llava_onevision"


@pytest.fixture(scope="module")
def mcq_file(tmp_path_factory, raw_videos):
    path = tmp_path_factory.mktemp("mcq") / "mcq.jsonl"
    rows = [{"id": f"q{i}", "video": str(clip), "question": "What colour is the shape first?",
             "options": ["red", "green", "blue", "yellow"], "answer": i % 4, "category": "order"}
            for i, clip in enumerate(sorted(raw_videos.glob("*.mp4")) * 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trainer(tmp_path, callbacks=(), logger=False, steps=2):
    return L.Trainer(default_root_dir=tmp_path, max_steps=steps, accelerator="cpu", enable_progress_bar=False,
                     enable_model_summary=False, logger=logger, enable_checkpointing=False, callbacks=list(callbacks))


def test_family_is_read_from_the_checkpoint():
    assert infer_family("builtin:tiny-qwen2_5_vl") == "qwen2_5_vl"
    assert infer_family(MODEL) == "llava_onevision"


def test_lightning_checkpoint_loads_the_trained_policy(tmp_path, pref_file):
    L.seed_everything(0)
    module = TPOModule(MODEL, "llava_onevision", lr=1e-2)
    trainer = _trainer(tmp_path)
    trainer.fit(module, PreferenceDataModule(str(pref_file), batch_size=2))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    adapter, model, _ = load_for_eval(str(tmp_path / "run.ckpt"), dtype=torch.float32, device="cpu")
    trained = module.policy.state_dict()
    assert adapter.family == "llava_onevision" and not model.training
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    _, base, _ = load_for_eval(MODEL, dtype=torch.float32, device="cpu")
    assert any(not torch.equal(v, trained[k]) for k, v in base.state_dict().items())  # training moved it


def test_cli_mcq_writes_predictions_and_summary_and_resumes(tmp_path, mcq_file):
    cmd = [sys.executable, "-m", "tpo.evaluate", "mcq", "--benchmark", "jsonl", "--data", str(mcq_file),
           "--model", MODEL, "--out", str(tmp_path), "--num-frames", "8", "--dtype", "float32",
           "--max-new-tokens", "4", "--limit", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "overall" in done.stdout and "category order" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["items"] == 5 and summary["benchmark"] == "jsonl" and 0 <= summary["accuracy"] <= 1
    done = subprocess.run(cmd[:-1] + ["8"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and json.loads((tmp_path / "summary.json").read_text())["items"] == 8
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 8


def test_cli_errors_are_clear(tmp_path):
    cmd = [sys.executable, "-m", "tpo.evaluate", "mcq", "--benchmark", "mlvu", "--data", str(tmp_path / "nope"),
           "--model", MODEL, "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "mlvu annotation file not found" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("scoring", ["generate", "likelihood"])
def test_callback_logs_accuracy_during_training(tmp_path, pref_file, mcq_file, scoring):
    L.seed_everything(0)
    callback = MCQEval(str(mcq_file), every_n_steps=2, num_frames=8, max_new_tokens=2, name="toy", scoring=scoring)
    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, [callback], logger=logger, steps=4)
    module = TPOModule(MODEL, "llava_onevision", lr=1e-3)
    trainer.fit(module, PreferenceDataModule(str(pref_file), batch_size=2))
    assert [step for step, _ in callback.history] == [0, 2, 4]
    assert module.policy.training  # put back in training mode after each evaluation
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "eval/toy/accuracy" in logged and "eval/toy/order" in logged


def test_generation_stops_at_the_end_of_turn_token():
    """Training ends every response with the tokenizer's eos; generation must stop there even when
    the checkpoint's generation config names no end token (the tiny models', some fine-tunes')."""
    from types import SimpleNamespace

    from tpo.models.generate import generate_texts, stop_token_ids

    adapter, model, processor = load_for_eval(MODEL, dtype=torch.float32, device="cpu")
    tokenizer = processor.tokenizer
    assert model.generation_config.eos_token_id is None
    assert stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id]
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id]
    assert stop_token_ids(model, tokenizer) == [7, tokenizer.eos_token_id]
    seen = {}

    def fake_generate(**kwargs):  # records the stop tokens, replies "B" then end-of-turn then junk
        seen.update(kwargs)
        tail = tokenizer("B", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return torch.cat([kwargs["input_ids"], torch.tensor([tail])], dim=1)

    fake = SimpleNamespace(generate=fake_generate, parameters=model.parameters, generation_config=model.generation_config)
    ids = torch.tensor([[5, 6]])
    out = generate_texts(fake, tokenizer, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 4)
    assert [(g.text, g.truncated) for g in out] == [("B", False)]
    assert seen["eos_token_id"] == [7, tokenizer.eos_token_id]
