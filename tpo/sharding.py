"""FSDP2 for any supported family: every transformer block its own shard unit, then the root.

Use in a config as ``trainer.strategy.class_path: tpo.sharding.FSDP2Strategy``. It is Lightning's
``ModelParallelStrategy`` with all processes in one data-parallel (sharding) group; the sharding
itself happens in ``TPOModule.configure_model`` through :func:`build_sharded`:

1. the model is built on the meta device (parameters only: the small non-persistent buffers, such
   as rotary frequencies, are computed for real and stay fp32);
2. the trainable parts are chosen, the blocks are activation-checkpointed (a switch), and
   ``fully_shard`` is applied to each block class the adapter finds, then to the root;
3. each rank allocates only its shards, and :func:`load_full_weights` fills them from one copy of
   the checkpoint read on rank 0, broadcast tensor by tensor. No rank ever holds more than one
   full copy; the other ranks never hold one.

Mixed precision is FSDP2's own: parameters are all-gathered in bf16 for compute, gradients are
reduced in fp32 and the optimizer updates fp32 master weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from typing import Callable

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from tpo.errors import ConfigError
from tpo.models import ModelAdapter

SUPPORTED_PRECISIONS = ("32-true", "bf16-mixed")


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (FSDP2) over every process of every node.

    Args:
        activation_checkpointing: recompute each block's activations in backward instead of keeping
            them (the policy only; the reference never runs backward).
        save_distributed_checkpoint: each rank writes its own shard of weights and optimizer state
            (a checkpoint is a directory; ``python -m lightning.fabric.utilities.consolidate_checkpoint``
            or the run's Hugging Face export turn it into one file). ``False`` gathers everything on
            rank 0 into one file.
        timeout_s: how long a rank waits in a collective before the run fails. Rank 0 alone reads the
            checkpoint (and downloads it from the hub if it is not local: 16 GB for a 7B model) and
            alone writes the export, while the others wait; pre-download the model, or raise this.
        process_group_backend: ``nccl`` on GPUs and ``gloo`` on CPUs by default.
    """

    def __init__(self, activation_checkpointing: bool = True, save_distributed_checkpoint: bool = True,
                 timeout_s: float = 1800.0, process_group_backend: str | None = None):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timedelta(seconds=timeout_s))
        self.activation_checkpointing = activation_checkpointing

    def setup_environment(self) -> None:
        # internal: Lightning's "auto" sizes would give each node one data-parallel rank and tensor-parallel
        # ranks within it; the constructor cannot take the real size, which is known only once devices are.
        self._data_parallel_size = self.num_nodes * self.num_processes  # all ranks shard; no tensor parallelism
        super().setup_environment()


def mixed_precision_policy(precision: str):
    """FSDP2's mixed-precision policy for a Lightning ``precision`` setting (None: compute in the weights' dtype)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision not in SUPPORTED_PRECISIONS:
        raise ConfigError(f"trainer.precision {precision!r} is not supported with {FSDP2Strategy.__name__}; "
                          f"choose one of {list(SUPPORTED_PRECISIONS)} (bf16-mixed keeps fp32 master weights)")
    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def empty_model(adapter: ModelAdapter, model_path: str, dtype: torch.dtype) -> nn.Module:
    """The model's architecture with its parameters on the meta device (no memory) and real buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    config = adapter.load_config(model_path)
    with init_empty_weights(include_buffers=False):
        return AutoModelForImageTextToText.from_config(config, dtype=dtype)


def build_sharded(adapter: ModelAdapter, model_path: str, dtype: torch.dtype, mesh, precision: str,
                  prepare: Callable[[nn.Module], None], checkpointing: bool) -> nn.Module:
    """An empty, sharded model: ``prepare(model)`` first (e.g. choose trainable parts), then optional
    activation checkpointing, ``fully_shard`` per block and on the root, and the local shards allocated.
    The weights are not loaded: see :func:`load_full_weights`."""
    from torch.distributed.fsdp import fully_shard

    model = empty_model(adapter, model_path, dtype)
    prepare(model)
    blocks = tuple(adapter.block_classes(model))
    if not blocks:
        raise ConfigError(f"found no transformer-block classes to shard in {type(model).__name__}")
    if checkpointing:
        # internal: torch 2.14 has no public per-block checkpoint wrapper for FSDP2; torchtitan uses this one
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, blocks))
    policy = mixed_precision_policy(precision)
    for module in list(model.modules()):
        if isinstance(module, blocks):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    frozen = not any(p.requires_grad for p in model.parameters())
    # FSDP2 keeps the root's parameters gathered after forward for the backward that follows; a frozen
    # model (the reference) has no backward, so it gives them back at once.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True if frozen else None)
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # to_empty() discards them
    model.to_empty(device=mesh.device_type)  # "cuda" is this rank's current device
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    model.tie_weights()  # to_empty() gives every module its own parameter: tied embeddings must share one again
    return model


def load_full_weights(adapter: ModelAdapter, model_path: str, dtype: torch.dtype, models: list[nn.Module],
                      rank: int) -> None:
    """Fill sharded ``models`` with the checkpoint's weights: rank 0 reads it once, every rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = adapter.load(model_path, dtype)[0].state_dict() if rank == 0 else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    for model in models:
        set_model_state_dict(model, dict(full), options=options)  # it replaces the dict's values with shards
    del full


@contextmanager
def root_unsharded(model: nn.Module):
    """Keep a sharded model's root parameters gathered (a no-op for other models).

    ``generate()`` calls the vision encoder directly, outside the root module's forward, so the
    root unit's parameters (patch embedding, projector) would still be shards there."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield model
        return
    # FSDP2 picks its root at the first forward. Generation calls the vision encoder first, whose
    # blocks would each take themselves for the root, and the model's own forward would then fail
    # ("requires running forward through the root module first"). There is no public call for this
    # in torch 2.14; the state's lazy init is what the root's first forward runs. internal: for that reason
    model._get_fsdp_state()._lazy_init()
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()
