"""FSDP for any supported family: shard (and activation-checkpoint) its transformer blocks.

Use in a config as ``trainer.strategy.class_path: tpo.fsdp.TPOFSDPStrategy``. The block classes
are read from the loaded policy (``ModelAdapter.block_classes``) when the strategy is set up, so
configs never name a layer class. The reference model sits inside the same LightningModule and
is sharded the same way.
"""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy


class TPOFSDPStrategy(FSDPStrategy):
    def __init__(self, activation_checkpointing: bool = True, sharding_strategy: str = "FULL_SHARD",
                 state_dict_type: str = "sharded", **kwargs):
        # use_orig_params: frozen (vision tower) and trainable parameters share FSDP units.
        kwargs.setdefault("use_orig_params", True)
        kwargs.setdefault("limit_all_gathers", True)
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)
        self._checkpoint_blocks = activation_checkpointing

    def setup(self, trainer) -> None:
        module = trainer.lightning_module
        blocks = module.adapter.block_classes(module.policy)
        if not blocks:
            raise ValueError(f"found no transformer-block classes to wrap in {type(module.policy).__name__}")
        policy = ModuleWrapPolicy(blocks)
        self.kwargs["auto_wrap_policy"] = policy
        if self._checkpoint_blocks:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": policy}
        super().setup(trainer)
