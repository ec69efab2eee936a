"""TPOModule: a trainable policy and a frozen reference copy, trained with DPO + SFT."""

# No `from __future__ import annotations` here: jsonargparse reads the ranges of `tpo.settings`'
# types only from evaluated annotations.

import copy
import math
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric
from transformers import get_cosine_schedule_with_warmup

from tpo import reference, scoring, sharding
from tpo.attention import Attention, check_attention, use_attention
from tpo.errors import ConfigError, TPOError
from tpo.lora import LoraSettings, add_lora, describe_targets, lora_targets
from tpo.loss import LossType, Pair, tpo_loss
from tpo.models import get_adapter
from tpo.settings import Fraction, NonNegative, Positive, PositiveInt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
METRICS = ("loss", "loss_dpo", "loss_sft", "rewards/chosen", "rewards/rejected", "rewards/margin",
           "rewards/accuracy", "logps/chosen", "logps/rejected")


class TPOModule(L.LightningModule):
    """Post-trains a video-LMM on preference pairs with ``L = DPO(β) + α · SFT(chosen)``.

    The reference model is a frozen copy of the starting policy: always in eval mode, without
    gradients, and not a registered submodule, so it is in no checkpoint, no optimizer and no DDP
    bucket (it is re-loaded from ``model_path``). Both models are built in :meth:`configure_model`;
    under :class:`tpo.sharding.FSDP2Strategy` each is sharded block by block.

    Args:
        model_path: checkpoint directory or hub id (``builtin:tiny-<family>`` for the tiny models).
        family: model family (see ``tpo.models.FAMILIES``).
        beta: DPO temperature β (0: SFT on the chosen answers alone, the DPO term has no gradient).
        alpha: weight α of the SFT term (mean NLL per chosen token).
        loss_type: ``sigmoid`` (DPO, default), ``ipo`` or ``hinge``.
        lr: AdamW's peak learning rate: a linear warm-up from 0 to it, then a cosine decay to 0.
        weight_decay: AdamW's weight decay.
        warmup_ratio: share of the optimizer steps spent in the warm-up.
        trainable: parts that learn: any of ``vision_tower``, ``projector``, ``language_model``.
        dtype: dtype the weights are loaded in (``float32``, ``bfloat16``, ``float16``). With
            ``trainer.precision: bf16-mixed`` keep ``float32``: those are the master weights.
        reference_logps: a JSON file of reference log-probs per record, written by ``tpo precompute-ref``
            (``tpo/reference.py``). Set, no reference model is loaded: the file is read at the start of
            fit/validate. ``None``: a live frozen reference model.
        lora: train LoRA adapters on every linear layer of the language model's blocks instead of full
            weights (``trainable`` is then ignored); the reference is the same model with its adapters
            disabled, so there is no copy.
        time_instruction: LLaVA-Video's sentence on the frames' times before every question (the
            prompt LLaVA-Video was trained with); the batches are encoded with this module's adapter.
        thinking: the chat template's reasoning mode (``enable_thinking``). Off (default): a hybrid
            template (Qwen3.5) is asked for no reasoning and a thinking-only one gets its reasoning block
            closed empty, so answers are trained as final answers. It must match the data's
            (``answer.thinking``); evaluation follows the trained setting.
        attention: the kernel for the language model's attention under the shared-prefix mask:
            ``sdpa_no_cudnn`` (default: SDPA without cuDNN, whose masked backward gives NaN on Hopper
            before cuDNN 9.26), ``sdpa`` (SDPA's own choice) or ``flex_attention`` (a block mask, no
            ``L x L`` tensor; compiled at first use). See ``tpo/attention.py``.
        max_consecutive_skips: an optimizer step whose global gradient norm is not finite (NaN or
            inf) is skipped on every rank, and counted (``train/skipped_steps``); this many skips in a
            row stop training with an error.
    """

    def __init__(
        self, model_path: str, family: str, beta: NonNegative = 0.1, alpha: NonNegative = 1.0,
        loss_type: LossType = "sigmoid", lr: Positive = 1e-6, weight_decay: NonNegative = 0.0,
        warmup_ratio: Fraction = 0.1, trainable: tuple[str, ...] = ("language_model", "projector"),
        dtype: Literal["float32", "bfloat16", "float16"] = "float32", reference_logps: str | None = None,
        lora: LoraSettings | None = None, time_instruction: bool = False, thinking: bool = False,
        attention: Attention = "sdpa_no_cudnn",
        max_consecutive_skips: PositiveInt = 5,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_attention(attention)
        if loss_type == "ipo" and beta == 0:
            raise ConfigError("model.beta must be above 0 with loss_type ipo (its target margin is 1 / (2 beta))")
        self.adapter = get_adapter(family, time_instruction, thinking)
        self.processor = self.adapter.load_processor(model_path)  # the one processor: batches, export, evaluation
        config = self.adapter.load_config(model_path)
        self.layout = scoring.layout_for(config)  # how pairs are laid out (packed or two rows), from the model
        self.layout_description = scoring.describe_layout(config)
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose from {list(DTYPES)}")
        self.policy = None
        self.lora_summary: str | None = None  # the adapted layers per block kind, for the fit summary
        # Not a registered submodule: the reference is in no checkpoint, optimizer or DDP bucket.
        self.reference: reference.Reference | None = None  # chosen once: configure_model, or at fit start
        self.val_means = nn.ModuleDict({k.replace("/", "_"): MeanMetric() for k in METRICS})
        self.last_epoch_means: dict[str, float] = {}  # training metrics averaged over the last epoch
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_steps = 0
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite gradient norm, in the whole run
        self._skips_in_a_row = 0

    @property
    def live_reference(self) -> bool:
        return self.hparams.reference_logps is None and self.hparams.lora is None

    def _frozen_model(self) -> nn.Module | None:
        return self.reference.model if isinstance(self.reference, reference.FrozenCopy) else None

    # ---- models ------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        if self.hparams.attention == "flex_attention" and self._trains_on_cpu():
            raise ConfigError("model.attention flex_attention trains on GPUs only: FlexAttention has no backward on "
                              "CPU (torch 2.14); use sdpa_no_cudnn")
        if self.device_mesh is not None:
            self._configure_sharded()
            return
        h = self.hparams
        self.policy, _ = self.adapter.load(h.model_path, DTYPES[h.dtype])
        use_attention(self.policy, h.attention)
        if self.live_reference:
            self.reference = reference.FrozenCopy(self.adapter, copy.deepcopy(self.policy).requires_grad_(False).eval())
        if h.lora is not None:
            self.lora_summary = describe_targets(lora_targets(self.policy, self.adapter))
            self.policy = add_lora(self.policy, self.adapter, h.lora)
            if h.reference_logps is None:
                self.reference = reference.AdaptersOff(self.adapter, self.policy)
        else:
            self.adapter.set_trainable(self.policy, h.trainable)
        self.policy.train()  # from_pretrained returns eval mode

    def _trains_on_cpu(self) -> bool:
        # internal: `self.trainer` raises when no trainer is attached (a module used on its own, as in
        # tests and notebooks); Lightning has no public way to ask
        trainer = self._trainer
        if trainer is None:
            return False
        return trainer.state.fn == TrainerFn.FITTING and trainer.strategy.root_device.type == "cpu"

    def _configure_sharded(self) -> None:
        h, strategy = self.hparams, self.trainer.strategy
        if h.lora is not None:
            raise ConfigError("LoRA is not supported with the sharded strategy; train LoRA with `strategy: ddp`")
        dtype, mesh = DTYPES[h.dtype], self.device_mesh["data_parallel"]
        checkpointing = getattr(strategy, "activation_checkpointing", False)
        self.policy = sharding.build_sharded(self.adapter, h.model_path, dtype, mesh, self.trainer.precision,
                                             lambda m: self.adapter.set_trainable(m, h.trainable), checkpointing)
        models = [self.policy]
        if self.live_reference:
            ref = sharding.build_sharded(self.adapter, h.model_path, dtype, mesh, self.trainer.precision,
                                         lambda m: m.requires_grad_(False), checkpointing=False)
            self.reference = reference.FrozenCopy(self.adapter, ref.eval())
            models.append(ref)
        for model in models:
            use_attention(model, h.attention)
        sharding.load_full_weights(self.adapter, h.model_path, dtype, models, self.global_rank)
        self.policy.train()

    # internal: Lightning moves and casts a module with ``.to()`` / ``.half()`` (``nn.Module._apply``);
    # the frozen copy is not a submodule, so it is carried along here. No public hook covers every such call.
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        frozen = self._frozen_model()
        if frozen is not None:
            frozen._apply(fn, *args, **kwargs)  # internal: as above
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        frozen = self._frozen_model()
        if frozen is not None:
            frozen.eval()  # the reference never leaves eval mode (no dropout)
        return self

    # ---- precomputed reference log-probs -----------------------------------------------------
    def reference_fingerprint(self, precision: str) -> str:
        """What precomputed log-probs must have been made with: model, dtype, precision, processor, prompts."""
        h = self.hparams
        return reference.model_fingerprint(h.model_path, self.adapter, h.dtype, precision, self.processor)

    def _read_precomputed(self) -> None:
        if self.hparams.reference_logps is not None and self.reference is None:
            datamodule = self.trainer.datamodule
            fingerprint = self.reference_fingerprint(self.trainer.precision)
            self.reference = reference.read(self.hparams.reference_logps, fingerprint, datamodule.all_records())

    def on_fit_start(self) -> None:
        self._read_precomputed()

    def on_validation_start(self) -> None:
        self._read_precomputed()

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, list[float]]:
        """``{record id: [chosen, rejected]}`` reference log-probs (``tpo precompute-ref``): before
        training, the policy is the reference."""
        logps, _ = self.sequence_logps(self.policy, batch)
        return {rid: [c, r] for rid, c, r in zip(batch["ids"], logps.chosen.tolist(), logps.rejected.tolist())}

    # ---- loss --------------------------------------------------------------------------------
    def sequence_logps(self, model, batch: dict) -> tuple[Pair, Pair]:
        """Response log-probs and token counts per pair: one forward over the batch, in its layout
        (:attr:`layout`: a packed row per pair, or two rows for a model with recurrent layers)."""
        return scoring.pair_logps(self.adapter, model, batch)

    def compute_loss(self, batch: dict, rows: torch.Tensor | slice = slice(None)) -> dict[str, torch.Tensor]:
        """Loss and metrics of the pairs ``rows`` of the batch (every pair goes through the models)."""
        policy_logps, tokens = self.sequence_logps(self.policy, batch)
        ref_logps = self.reference.logps(batch)
        h, tokens = self.hparams, tokens.rows(rows)
        sft_tokens = None
        # internal: `_trainer`, as in _trains_on_cpu
        if self.training and self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(tokens.chosen.sum().float(), reduce_op="sum")
            sft_tokens = total / self.trainer.world_size
        return tpo_loss(policy_logps.rows(rows), ref_logps.rows(rows), tokens, beta=h.beta, alpha=h.alpha,
                        loss_type=h.loss_type, sft_tokens=sft_tokens)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.compute_loss(batch)
        n = len(batch["ids"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict({f"train/{k}" if "/" not in k else k: v for k, v in out.items() if k != "loss"},
                      batch_size=n, sync_dist=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=n)
        for key in ("loss", "rewards/accuracy", "rewards/margin"):
            self._epoch_sums[key] = self._epoch_sums.get(key, 0) + out[key].detach()
        self._epoch_steps += 1
        return out["loss"]

    def on_train_epoch_end(self) -> None:
        if self._epoch_steps:
            means = {k: self.trainer.strategy.reduce(v / self._epoch_steps, reduce_op="mean")
                     for k, v in self._epoch_sums.items()}
            self.last_epoch_means = {k: float(v) for k, v in means.items()}
        self._epoch_sums, self._epoch_steps = {}, 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        counted = batch["counted"]  # False: a duplicate that only keeps the ranks' batch counts equal
        out = self.compute_loss(batch, counted)
        weight = int(counted.sum())
        for key in METRICS:
            metric = self.val_means[key.replace("/", "_")]
            if weight:
                metric.update(out[key], weight)
            self.log(f"val/{key}", metric, batch_size=max(weight, 1))

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay)
        total = max(1, optimizer_steps(self.trainer, len(self.trainer.datamodule.train_dataloader())))
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(h.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Logs ``train/grad_norm`` (global, before clipping) and clips by it; sharded gradients included.

        A non-finite norm skips the step: one NaN would otherwise make the clip coefficient NaN and
        AdamW write NaN into every shard. The norm is global, so every rank skips the same steps."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(norm, "full_tensor"):  # a DTensor: each rank holds the norm of its shards only
            norm = norm.full_tensor()
        self.log("train/grad_norm", norm, batch_size=1)
        finite = bool(torch.isfinite(norm))
        if not finite and getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16's GradScaler skips overflowing steps itself while it calibrates its scale
        self._count_skip(skipped=not finite)
        if not finite:
            for p in params:
                p.grad = None  # AdamW leaves a parameter without a gradient untouched, moments and all
            return
        if gradient_clip_val is None:
            return
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def _count_skip(self, skipped: bool) -> None:
        self._skips_in_a_row = self._skips_in_a_row + 1 if skipped else 0
        self.skipped_steps += skipped
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)
        if self._skips_in_a_row >= self.hparams.max_consecutive_skips:
            raise NonFiniteGradientError(
                f"the global gradient norm was not finite at {self._skips_in_a_row} optimizer steps in a row "
                f"(up to step {self.trainer.global_step}; {self.skipped_steps} skipped in all): the run is "
                "diverging or its inputs are broken. Lower model.lr, check the last records trained, or raise "
                "model.max_consecutive_skips")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_steps = checkpoint.get("skipped_steps", 0)


class NonFiniteGradientError(TPOError):
    """Training stopped after ``max_consecutive_skips`` optimizer steps with a NaN or inf gradient norm."""


def optimizer_steps(trainer: L.Trainer, batches_per_epoch: int) -> int:
    """The run's number of optimizer steps, as Lightning's ``trainer.estimated_stepping_batches``.

    Computed from the loader's length because asking the trainer sets its train loader up before a
    sharded checkpoint is restored, and the loader's mid-epoch position is then never applied (Lightning
    2.6, strategies that restore after setup): a resumed run would start the epoch over.
    """
    if trainer.max_epochs == -1:
        return trainer.max_steps
    limit = trainer.limit_train_batches
    batches = min(batches_per_epoch, limit) if isinstance(limit, int) else int(batches_per_epoch * limit)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps
