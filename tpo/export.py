"""Hugging Face export of the trained policy, loadable with ``AutoModelForImageTextToText``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning as L
import torch

from tpo.data.decoders import backend_name
from tpo.lora import is_lora


def full_policy_state_dict(policy) -> dict[str, torch.Tensor]:
    """The policy's full weights on CPU. Sharded (FSDP2) weights are gathered: every rank must call
    this; rank 0 gets the weights (the other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(policy, FSDPModule):
        return {k: v.cpu() for k, v in policy.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(policy, options=options)


PROMPT_FILE = "tpo_prompt.json"  # how the policy was prompted in training, for evaluation to do the same


def trained_prompt(path: str | Path) -> dict:
    """``{family, time_instruction, thinking, ...}`` of a TPO export (empty for any other model directory)."""
    file = Path(path) / PROMPT_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def export_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir) / "export"


def checkpoint_dtype(adapter, model_path: str) -> torch.dtype | None:
    """The dtype the starting checkpoint was saved in (its config's ``dtype``), None if it says none."""
    dtype = getattr(adapter.load_config(model_path), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def cast_floating(state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Cast the floating-point tensors of ``state`` in place, one at a time (one extra tensor at the peak)."""
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = value.to(dtype)


def record_dtype(config, dtype: torch.dtype) -> None:
    """Set ``dtype`` in a config and in its sub-configs (text, vision)."""
    from transformers import PretrainedConfig

    config.dtype = str(dtype).removeprefix("torch.")
    for value in vars(config).values():
        if isinstance(value, PretrainedConfig):
            value.dtype = config.dtype


def training_frame_counts(trainer: L.Trainer) -> dict[str, int]:
    """How many training examples showed how many frames (``{"32": 9980, "4": 20}``); empty without
    the preference data module."""
    train_set = getattr(getattr(trainer, "datamodule", None), "train_set", None)
    counts = Counter(len(record.frame_indices) for record in (train_set.records if train_set else ()))
    return {str(frames): n for frames, n in sorted(counts.items())}


class HFExport(L.Callback):
    """At the end of fit, ``save_pretrained`` the policy and processor into ``<run dir>/export``, with
    ``tpo_prompt.json`` saying how it was prompted (evaluation reads it), on how many frames per
    example and with which video decoder.

    The weights are written in the dtype the starting checkpoint came in (bf16 for the released 7B
    models: about 16 GB, not the 32 GB of the fp32 master weights), and ``config.json`` records it.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self.enabled or trainer.interrupted:
            return
        self.path = export_dir(trainer)
        if is_lora(pl_module.policy):  # LoRA trains replicated (DDP): every rank merges the same adapters
            pl_module.policy = pl_module.policy.merge_and_unload()
        state = full_policy_state_dict(pl_module.policy)
        if trainer.is_global_zero:
            policy, dtype = pl_module.policy, checkpoint_dtype(pl_module.adapter, pl_module.hparams.model_path)
            if dtype is not None:
                cast_floating(state, dtype)
            policy.save_pretrained(self.path, state_dict=state)
            if dtype is not None:  # save_pretrained recorded the dtype of the policy's (master) weights
                record_dtype(policy.config, dtype)
                policy.config.save_pretrained(self.path)
            pl_module.processor.save_pretrained(self.path)
            prompt = {"family": pl_module.adapter.family, "time_instruction": pl_module.adapter.time_instruction,
                      "thinking": pl_module.adapter.thinking,
                      "num_frames": training_frame_counts(trainer), "video_backend": backend_name()}
            (self.path / PROMPT_FILE).write_text(json.dumps(prompt, indent=2) + "\n")
        trainer.strategy.barrier("hf_export")
