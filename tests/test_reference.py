"""Precomputed reference log-probs: same training as a live reference, and stale caches refused."""

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from tpo.data.datamodule import PreferenceDataModule
from tpo.module import TPOModule
from tpo.reference import AdaptersOff, Precomputed, StaleReferenceError, precompute

FAMILY = "llava_onevision"
MODEL = f"builtin:tiny-{FAMILY}"
REPO = Path(__file__).resolve().parents[1]


class Losses(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(outputs["loss"].item())


class FirstRewards(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            self.values = (trainer.callback_metrics["rewards/chosen"].item(),
                           trainer.callback_metrics["rewards/rejected"].item())


def _fit(root, pref_file, steps=8, precision="32-true", ckpt_path=None, checkpoint=False, time_instruction=False,
         **module_args):
    L.seed_everything(0)
    module = TPOModule(MODEL, FAMILY, beta=0.3, lr=3e-3, time_instruction=time_instruction, **module_args)
    losses, rewards = Losses(), FirstRewards()
    trainer = L.Trainer(default_root_dir=root, max_steps=steps, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, logger=False, enable_checkpointing=checkpoint, precision=precision,
                        callbacks=[losses, rewards])
    dm = PreferenceDataModule(str(pref_file), batch_size=4, seed=0, val_fraction=0.25)
    if module.hparams.reference_logps is not None and ckpt_path is None:  # as `tpo precompute-ref` does
        precompute(L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False),
                   module, dm)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    module.first_rewards = getattr(rewards, "values", None)
    return module, losses.values, dm


def test_precomputed_reference_trains_like_the_live_reference(tmp_path, pref_file):
    _, live, _ = _fit(tmp_path / "live", pref_file)
    cache = tmp_path / "ref.json"
    module, cached, dm = _fit(tmp_path / "cached", pref_file, reference_logps=str(cache))
    assert isinstance(module.reference, Precomputed) and cache.exists()  # no reference model held
    assert len(json.loads(cache.read_text())["entries"]) == len(dm.all_records())
    assert cached == pytest.approx(live, rel=1e-4, abs=1e-5)
    assert not any(k.startswith("reference.") for k in module.state_dict())
    _, again, _ = _fit(tmp_path / "again", pref_file, reference_logps=str(cache))  # read back, not recomputed
    assert again == pytest.approx(live, rel=1e-4, abs=1e-5)


def test_stale_or_foreign_caches_are_refused(tmp_path, pref_file):
    cache = tmp_path / "ref.json"
    _fit(tmp_path / "a", pref_file, steps=1, reference_logps=str(cache))
    stale = "another model, dtype, precision, processor or prompt settings"
    with pytest.raises(StaleReferenceError, match=stale):
        _fit(tmp_path / "b", pref_file, steps=1, reference_logps=str(cache), dtype="bfloat16")
    with pytest.raises(StaleReferenceError, match=stale):
        _fit(tmp_path / "b", pref_file, steps=1, reference_logps=str(cache), precision="bf16-mixed")
    with pytest.raises(StaleReferenceError, match=stale):  # the prompts the log-probs were taken on changed
        _fit(tmp_path / "b", pref_file, steps=1, reference_logps=str(cache), time_instruction=True)
    edited = tmp_path / "edited.jsonl"
    lines = pref_file.read_text().splitlines()
    record = json.loads(lines[0])
    record["chosen"] += " Then it stops."
    cut = {**json.loads(lines[1]), "rejected_truncated": True}  # no end-of-turn token scored now
    edited.write_text("\n".join([json.dumps(record), json.dumps(cut)] + lines[2:]) + "\n")
    (tmp_path / "videos").symlink_to(pref_file.parent / "videos")
    with pytest.raises(StaleReferenceError, match=r"0 record\(s\) missing, 2 changed"):
        _fit(tmp_path / "c", edited, steps=1, reference_logps=str(cache))


def test_fit_without_the_file_says_how_to_make_it(tmp_path, pref_file):
    cache = tmp_path / "ref.json"
    _fit(tmp_path / "a", pref_file, steps=2, reference_logps=str(cache), checkpoint=True)
    checkpoint = next((tmp_path / "a").rglob("*.ckpt"))
    cache.unlink()
    with pytest.raises(StaleReferenceError, match="do not exist: compute them first with `tpo precompute-ref`"):
        _fit(tmp_path / "a", pref_file, steps=4, reference_logps=str(cache), ckpt_path=checkpoint)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("reference", ["live", "precomputed"])
def test_first_step_rewards_are_zero(tmp_path, pref_file, precision, reference):
    """The reference is the starting policy, under the training precision: nothing to reward yet.

    Exactly 0 in fp32. In bf16 the policy's forward (with gradients) and the reference's (without)
    may run different SDPA code: on some CPUs PyTorch's flash kernel rounds a bf16 forward
    differently with and without gradients (measured: 2e-4 in a summed log-prob), so the rewards
    are 0 within bf16 rounding; a wrong reference would be off by whole log-probs times beta."""
    path = str(tmp_path / "ref.json") if reference == "precomputed" else None
    module, _, _ = _fit(tmp_path, pref_file, steps=1, precision=precision, reference_logps=path)
    if precision == "32-true":
        assert module.first_rewards == (0.0, 0.0)
    else:
        assert max(abs(r) for r in module.first_rewards) < 1e-3, module.first_rewards


def test_precompute_ref_command(tmp_path, pref_file):
    cmd = [sys.executable, "-m", "tpo", "precompute-ref", "--config", str(REPO / "lightning_configs/demo.yaml"),
           "--trainer.default_root_dir", str(tmp_path), "--data.path", str(pref_file),
           "--model.reference_logps", str(tmp_path / "ref.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "records written" in done.stdout and (tmp_path / "ref.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0 and "records checked" in done.stdout


def test_lora_reference_is_the_base_model_with_adapters_off(tmp_path, pref_file):
    import torch

    from tpo.data.collate import SharedPrefixCollator
    from tpo.export import HFExport
    from tpo.shared_prefix import shared_prefix_logps

    L.seed_everything(0)
    module = TPOModule(MODEL, FAMILY, beta=0.3, lr=3e-3, lora={"r": 4, "alpha": 8, "dropout": 0.0})  # as the CLI gives it
    dm = PreferenceDataModule(str(pref_file), batch_size=4, seed=0)
    dm.connect(module)
    dm.setup("fit")
    batch = SharedPrefixCollator(module.adapter, dm.collator.processor)([dm.train_set[0], dm.train_set[1]])
    base = module.adapter.load(MODEL)[0].eval()
    with torch.no_grad():
        base_logps = torch.cat(shared_prefix_logps(module.adapter, base, batch)[0])
    seen = {}

    class AtTrainEnd(L.Callback):  # before the export merges the adapters into the weights
        def on_train_end(self, trainer, pl_module):
            with torch.no_grad():
                seen["reference"] = torch.cat(pl_module.reference.logps(batch))
                seen["policy"] = torch.cat(shared_prefix_logps(pl_module.adapter, pl_module.policy, batch)[0])

    export = HFExport()
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=6, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, logger=False, enable_checkpointing=False,
                        callbacks=[AtTrainEnd(), export])
    module.configure_model()
    trainable = [n for n, p in module.policy.named_parameters() if p.requires_grad]
    assert isinstance(module.reference, AdaptersOff)
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    trainer.fit(module, dm)
    assert torch.allclose(seen["reference"], base_logps, atol=1e-4)  # adapters off = the base model
    assert not torch.allclose(seen["policy"], base_logps, atol=1e-3)  # the adapters learned something
    with torch.no_grad():  # the export holds the merged weights: it scores like the trained policy
        exported = torch.cat(shared_prefix_logps(module.adapter, module.adapter.load(str(export.path))[0].eval(),
                                                 batch)[0])
    assert torch.allclose(exported, seen["policy"], atol=1e-4)
