"""FSDP2Strategy on one process (the 1-GPU case, here on CPU): what configure_model builds."""

import os
from contextlib import contextmanager

import lightning as L
import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from tpo.data.datamodule import EvenShares, PreferenceDataModule, PreferenceDataset
from tpo.module import TPOModule
from tpo.sharding import FSDP2Strategy

FAMILY = "llava_onevision"
MODEL = f"builtin:tiny-{FAMILY}"


class ComputeDtypes(L.Callback):
    """The dtype of a decoder projection's weight *during* forward (FSDP2 casts when it gathers)."""

    def on_fit_start(self, trainer, pl_module):  # the models exist from here on
        self.seen = []
        layer = pl_module.policy.model.language_model.layers[0]
        attention = next(m for n, m in layer.named_modules() if n.endswith("self_attn"))
        attention.q_proj.register_forward_hook(lambda m, args, out: self.seen.append((m.weight.dtype, out.dtype)))


@contextmanager
def own_process_group():
    """A fit in this process starts a process group and sets MASTER_PORT & co.: both go again after,
    so later tests (and the runs they start) get a fresh port."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, pref_file):
    L.seed_everything(0)
    module = TPOModule(MODEL, FAMILY, beta=0.3, lr=1e-3)
    dm = PreferenceDataModule(str(pref_file), batch_size=2, val_fraction=0.25)
    dtypes = ComputeDtypes()
    trainer = L.Trainer(default_root_dir=tmp_path_factory.mktemp("sharded"), accelerator="cpu", devices=1,
                        strategy=FSDP2Strategy(), precision="bf16-mixed", max_steps=2, gradient_clip_val=1.0,
                        enable_progress_bar=False, enable_model_summary=False, logger=False,
                        enable_checkpointing=False, callbacks=[dtypes])
    with own_process_group():
        trainer.fit(module, dm)
        yield module, dtypes, trainer


def test_policy_is_sharded_with_fp32_master_weights_and_bf16_compute(sharded):
    module, dtypes, _ = sharded
    params = list(module.policy.parameters())
    assert params and all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in params)
    assert dtypes.seen and all(d == (torch.bfloat16, torch.bfloat16) for d in dtypes.seen)


def test_rotary_buffers_stay_fp32(sharded):
    module, _, _ = sharded
    for model in (module.policy, module.reference.model):
        inv_freq = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
        assert inv_freq and all(b.dtype == torch.float32 for b in inv_freq)


def test_reference_is_frozen_sharded_and_outside_the_module(sharded):
    module, _, trainer = sharded
    reference = module.reference.model
    assert all(isinstance(p, DTensor) and not p.requires_grad for p in reference.parameters())
    assert not reference.training and module.policy.training
    reference_ids = {id(p) for p in reference.parameters()}
    assert reference_ids.isdisjoint(id(p) for p in module.parameters())
    assert not any(k.startswith("reference") for k in module.state_dict())
    optimizer_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimizer_ids and optimizer_ids.isdisjoint(reference_ids)


def test_policy_blocks_are_checkpointed_and_the_reference_is_not(sharded):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    module, _, _ = sharded
    assert any(isinstance(m, CheckpointWrapper) for m in module.policy.modules())
    assert not any(isinstance(m, CheckpointWrapper) for m in module.reference.model.modules())


def test_unsupported_precision_is_a_clear_error(tmp_path, pref_file):
    module = TPOModule(MODEL, FAMILY)
    dm = PreferenceDataModule(str(pref_file), batch_size=2)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, strategy=FSDP2Strategy(),
                        precision="bf16-true", max_steps=1, logger=False, enable_checkpointing=False)
    with own_process_group(), pytest.raises(ValueError, match="precision 'bf16-true' is not supported"):
        trainer.fit(module, dm)


def test_validation_shares_are_even_and_repeats_are_not_counted(pref_file):
    dm = PreferenceDataModule(str(pref_file), val_fraction=0.25)
    dm.connect(TPOModule(MODEL, FAMILY))
    dm.setup("fit")
    five = PreferenceDataset(dm.val_set.records[:5])
    shares = EvenShares(five, world=2)
    assert len(shares) == 6
    items = [shares[i] for i in range(6)]
    assert [it["counted"] for it in items] == [True] * 5 + [False]
    assert items[5]["id"] == items[0]["id"]
    batch = dm.collator(items[4:])
    assert batch["counted"].tolist() == [True, False]


def test_tied_embeddings_stay_tied(tmp_path, pref_file):
    """LLaVA-OneVision-0.5B ties its LM head to the embeddings; sharding must keep one shared weight."""
    from tpo.synthetic.tiny_builders import build_llava_onevision

    torch.manual_seed(0)
    model, processor = build_llava_onevision(text={"tie_word_embeddings": True})
    model.save_pretrained(tmp_path / "tied")
    processor.save_pretrained(tmp_path / "tied")
    path = str(tmp_path / "tied")
    module = TPOModule(path, FAMILY, beta=0.3, lr=1e-2)
    dm = PreferenceDataModule(str(pref_file), batch_size=2)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, strategy=FSDP2Strategy(),
                        max_steps=2, enable_progress_bar=False, enable_model_summary=False, logger=False,
                        enable_checkpointing=False)
    with own_process_group():
        trainer.fit(module, dm)
    policy = module.policy
    assert policy.lm_head.weight is policy.model.language_model.embed_tokens.weight
    assert not torch.equal(policy.lm_head.weight.to_local(), model.lm_head.weight)  # it trained, as one weight
