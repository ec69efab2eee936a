"""Training behaviour on the synthetic world: learning, frozen reference, resume, export."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForImageTextToText, AutoProcessor

from tpo.data.datamodule import PreferenceDataModule
from tpo.export import HFExport
from tpo.two_pass import response_logps, two_pass_collate
from tpo.models import get_adapter
from tpo.module import TPOModule
from tpo.shared_prefix import shared_prefix_logps

FAMILY = "llava_onevision"
MODEL = f"builtin:tiny-{FAMILY}"
EPOCHS = 14


class Recorder(L.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        self.steps.append({"epoch": trainer.current_epoch, "loss": outputs["loss"].item(),
                           "accuracy": m["rewards/accuracy"].item(), "margin": m["rewards/margin"].item()})


def _fit(root, pref_file, max_epochs, ckpt_path=None, callbacks=(), **hparams):
    L.seed_everything(0)
    module = TPOModule(MODEL, FAMILY, **{"beta": 0.3, "alpha": 1.0, "lr": 3e-3, **hparams})
    dm = PreferenceDataModule(str(pref_file), batch_size=4, seed=0, val_fraction=0.25)
    recorder = Recorder()
    trainer = L.Trainer(default_root_dir=root, max_epochs=max_epochs, accelerator="cpu", log_every_n_steps=1,
                        gradient_clip_val=1.0, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder, *callbacks])
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, module, dm, recorder


@pytest.fixture(scope="module")
def run(tmp_path_factory, pref_file):
    root = tmp_path_factory.mktemp("run")
    ckpt = ModelCheckpoint(save_top_k=-1, every_n_epochs=1)
    module = TPOModule(MODEL, FAMILY)
    module.configure_model()
    initial_reference = {k: v.clone() for k, v in module.reference.model.state_dict().items()}
    trainer, module, dm, recorder = _fit(root, pref_file, EPOCHS, callbacks=[ckpt, HFExport()])
    return {"trainer": trainer, "module": module, "dm": dm, "steps": recorder.steps, "ckpt": ckpt,
            "initial_reference": initial_reference, "root": root}


def _checkpoints(run):
    return sorted(Path(run["ckpt"].dirpath).glob("*.ckpt"))


def test_preferences_are_learned(run):
    steps = run["steps"]
    last = [s for s in steps if s["epoch"] == EPOCHS - 1]
    first = [s for s in steps if s["epoch"] == 0]
    assert sum(s["accuracy"] for s in last) / len(last) > 0.9
    assert sum(s["margin"] for s in last) / len(last) > sum(s["margin"] for s in first) / len(first) + 0.5
    assert "val/rewards/accuracy" in run["trainer"].callback_metrics


def test_reference_stays_bit_identical_and_out_of_checkpoints(run):
    module = run["module"]
    for key, value in module.reference.model.state_dict().items():
        assert torch.equal(value, run["initial_reference"][key]), key
    changed = [k for k, v in module.policy.state_dict().items() if not torch.equal(v, run["initial_reference"][k])]
    assert changed  # the policy did move
    assert not module.reference.model.training and all(not p.requires_grad for p in module.reference.model.parameters())
    optimizer_params = {id(p) for g in run["trainer"].optimizers[0].param_groups for p in g["params"]}
    assert optimizer_params.isdisjoint({id(p) for p in module.reference.model.parameters()})
    state = torch.load(_checkpoints(run)[-1], weights_only=False)["state_dict"]
    assert state and not any(k.startswith("reference.") for k in state)
    assert all(k.startswith("policy.") for k in state)


def test_resume_reproduces_the_uninterrupted_run(run, pref_file, tmp_path):
    """Resumed from the next-to-last epoch's checkpoint, the last epoch is the uninterrupted run's."""
    checkpoint = next(p for p in _checkpoints(run) if f"epoch={EPOCHS - 2}-" in p.name)
    _, _, _, resumed = _fit(tmp_path, pref_file, EPOCHS, ckpt_path=checkpoint)
    expected = [s["loss"] for s in run["steps"] if s["epoch"] == EPOCHS - 1]
    got = [s["loss"] for s in resumed.steps]
    assert len(got) == len(expected)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_hf_export_loads_back_with_the_same_logps(run):
    export = run["trainer"].log_dir + "/export"
    model = AutoModelForImageTextToText.from_pretrained(export).eval()
    processor = AutoProcessor.from_pretrained(export)
    module, dm = run["module"], run["dm"]
    batch = two_pass_collate(module.adapter, processor, [dm.train_set[0], dm.train_set[1]])
    with torch.no_grad():
        exported, _ = response_logps(model(**batch["inputs"]).logits, batch["labels"])
        trained, _ = response_logps(module.policy.eval()(**batch["inputs"]).logits, batch["labels"])
        reference, _ = response_logps(module.reference.model(**batch["inputs"]).logits, batch["labels"])
    assert torch.allclose(exported, trained, atol=1e-5)
    assert not torch.allclose(exported, reference, atol=1e-3)


def test_hf_export_is_written_in_the_checkpoints_dtype(tmp_path, pref_file):
    """A bf16 checkpoint trained with fp32 master weights is exported in bf16, and scores as trained."""
    import json

    from safetensors import safe_open

    source = tmp_path / "bf16_model"
    model, processor = get_adapter(FAMILY).load(MODEL)
    model.to(torch.bfloat16).save_pretrained(source)
    processor.save_pretrained(source)
    L.seed_everything(0)
    module = TPOModule(str(source), FAMILY, beta=0.3, lr=3e-3)
    dm = PreferenceDataModule(str(pref_file), batch_size=4, val_fraction=0.25)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=2, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, logger=False, callbacks=[HFExport()])
    trainer.fit(module, dm)
    export = Path(trainer.default_root_dir) / "export"
    assert json.loads((export / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(next(export.glob("*.safetensors"))), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert next(module.policy.parameters()).dtype == torch.float32  # trained on fp32 master weights

    exported, _ = get_adapter(FAMILY).load(str(export))
    batch = dm.collator([dm.val_set[i] for i in range(4)])
    with torch.no_grad():
        got = torch.cat(shared_prefix_logps(module.adapter, exported.eval(), batch)[0])
        trained = torch.cat(shared_prefix_logps(module.adapter, module.policy.eval(), batch)[0])
        base = torch.cat(shared_prefix_logps(module.adapter, get_adapter(FAMILY).load(str(source))[0].eval(), batch)[0])
    assert torch.allclose(got, trained, rtol=2**-8, atol=0)  # within bf16's rounding of each weight
    assert not torch.allclose(got, base, rtol=0.1)  # and it did train
