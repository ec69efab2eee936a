"""TPOModule: a trainable policy and a frozen reference copy, trained with DPO + SFT."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from tpo.data.datamodule import PreferenceDataset
from tpo.lora import LoraSettings, add_lora
from tpo.loss import LossType, tpo_loss
from tpo.models import get_adapter
from tpo.shared_prefix import shared_prefix_logps

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REFERENCE_PREFIX = "reference."


class TPOModule(L.LightningModule):
    """Post-trains a video-LMM on preference pairs with ``L = DPO(β) + α · SFT(chosen)``.

    The reference model is a frozen copy of the starting policy: always in eval mode, without
    gradients, outside the optimizer and left out of checkpoints (it is re-loaded from
    ``model_path``). Both models are loaded in :meth:`configure_model`, so strategies such as
    FSDP shard the reference like the policy.

    Args:
        model_path: checkpoint directory or hub id (``builtin:tiny-<family>`` for the tiny models).
        family: model family (see ``tpo.models.FAMILIES``).
        beta: DPO temperature β.  alpha: weight α of the SFT term (mean NLL per chosen token).
        loss_type: ``sigmoid`` (DPO, default), ``ipo`` or ``hinge``.
        lr, weight_decay, warmup_ratio: AdamW with a cosine schedule after linear warm-up.
        trainable: parts that learn: any of ``vision_tower``, ``projector``, ``language_model``.
        dtype: dtype the weights are loaded in (``float32``, ``bfloat16``, ``float16``).
        reference_logps: a JSON file of reference log-probs per record (``tpo/reference.py``). Set, no
            reference model is loaded: the file is read at the start of fit/validate, and computed there
            first (with the untrained policy, which *is* the reference) when it does not exist yet.
            ``None``: a live frozen reference model.
        lora: train LoRA adapters on the language model instead of full weights (``trainable`` is then
            ignored); the reference is the same model with its adapters disabled, so there is no copy.
    """

    def __init__(
        self, model_path: str, family: str, beta: float = 0.1, alpha: float = 1.0,
        loss_type: LossType = "sigmoid", lr: float = 1e-6, weight_decay: float = 0.0,
        warmup_ratio: float = 0.1, trainable: tuple[str, ...] = ("language_model", "projector"),
        dtype: str = "float32", reference_logps: str | None = None, lora: LoraSettings | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.adapter = get_adapter(family)
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {list(DTYPES)}")
        self.policy = None
        self.reference = None
        self.reference_table: dict[str, torch.Tensor] | None = None  # record id -> [chosen, rejected]
        self.last_epoch_means: dict[str, float] = {}  # training metrics averaged over the last epoch
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_steps = 0
        self._register_state_dict_hook(_drop_reference)
        self._register_load_state_dict_pre_hook(self._keep_reference)

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        dtype = DTYPES[self.hparams.dtype]
        self.policy, _ = self.adapter.load(self.hparams.model_path, dtype)
        if self.hparams.lora is not None:
            self.policy = add_lora(self.policy, self.adapter, self.hparams.lora)
        else:
            self.adapter.set_trainable(self.policy, self.hparams.trainable)
        self.policy.train()  # from_pretrained returns eval mode
        if self.hparams.reference_logps is None and self.hparams.lora is None:
            self.reference, _ = self.adapter.load(self.hparams.model_path, dtype)
            self.reference.requires_grad_(False).eval()

    # ---- precomputed reference log-probs -----------------------------------------------------
    def load_reference_logps(self, datamodule, resuming: bool = False) -> None:
        """Read ``reference_logps`` for every train/val record, computing the file first if absent."""
        from tpo import reference

        path, h = Path(self.hparams.reference_logps), self.hparams
        records = datamodule.all_records()
        fingerprint = reference.model_fingerprint(h.model_path, h.family, h.dtype, datamodule.collator.processor)
        if not path.exists():
            if resuming:
                raise FileNotFoundError(f"reference log-probs {path} are missing; a resumed run cannot compute them "
                                        "(the policy is no longer the reference): restore the file")
            values = reference.compute(self.adapter, self.policy, PreferenceDataset(records), datamodule.collator,
                                       datamodule.hparams.batch_size)
            trainer = self._trainer  # None outside fit/validate (`tpo precompute-ref`)
            if trainer is None or trainer.is_global_zero:
                reference.save(path, fingerprint, records, values)
            if trainer is not None:
                trainer.strategy.barrier("reference_logps")
        self.reference_table = reference.load(path, fingerprint, records)

    def _needs_reference_table(self) -> bool:
        return self.hparams.reference_logps is not None and self.reference_table is None

    def on_fit_start(self) -> None:
        if self._needs_reference_table():
            self.load_reference_logps(self.trainer.datamodule, resuming=self.trainer.ckpt_path is not None)

    def on_validation_start(self) -> None:
        if self._needs_reference_table():
            self.load_reference_logps(self.trainer.datamodule)

    def _reference_logps(self, batch: dict) -> torch.Tensor:
        if self.reference is not None:
            with torch.no_grad():
                return self.sequence_logps(self.reference, batch)[0]
        if self.reference_table is None:  # LoRA: the base model is the policy with adapters off
            with torch.no_grad(), self.policy.disable_adapter():
                return self.sequence_logps(self.policy, batch)[0]
        pairs = torch.stack([self.reference_table[rid] for rid in batch["ids"]]).to(self.device)
        return torch.cat([pairs[:, 0], pairs[:, 1]])

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never leaves eval mode (no dropout)
        return self

    # ---- loss --------------------------------------------------------------------------------
    def sequence_logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Response log-probs ``(2B,)`` (chosen rows, then rejected), one shared-prefix forward per pair."""
        return shared_prefix_logps(self.adapter, model, batch)

    def _step(self, batch: dict) -> dict[str, torch.Tensor]:
        n = len(batch["ids"])
        policy_logps, tokens = self.sequence_logps(self.policy, batch)
        ref_logps = self._reference_logps(batch)
        h = self.hparams
        return tpo_loss(policy_logps[:n], policy_logps[n:], ref_logps[:n], ref_logps[n:], tokens[:n],
                        beta=h.beta, alpha=h.alpha, loss_type=h.loss_type)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self._step(batch)
        n = len(batch["ids"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        self.log("train/loss_dpo", out["loss_dpo"], batch_size=n)
        self.log("train/loss_sft", out["loss_sft"], batch_size=n)
        self.log_dict({k: v for k, v in out.items() if "/" in k}, batch_size=n)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=n)
        for key in ("loss", "rewards/accuracy", "rewards/margin"):
            self._epoch_sums[key] = self._epoch_sums.get(key, 0) + out[key].detach()
        self._epoch_steps += 1
        return out["loss"]

    def on_train_epoch_end(self) -> None:
        if self._epoch_steps:
            self.last_epoch_means = {k: float(v) / self._epoch_steps for k, v in self._epoch_sums.items()}
        self._epoch_sums, self._epoch_steps = {}, 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._step(batch)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=len(batch["ids"]), sync_dist=True)

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(h.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: the reference is not saved, and comes back from memory on load -----------
    def _keep_reference(self, state_dict, prefix, *args) -> None:
        if self.reference is None:
            return
        for key, value in self.reference.state_dict().items():
            state_dict.setdefault(prefix + REFERENCE_PREFIX + key, value)


def _drop_reference(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + REFERENCE_PREFIX)]:
        del state_dict[key]
