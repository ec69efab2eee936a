"""LoRA (``peft``) on every linear layer of the language model's blocks; the reference is then the base
model with adapters off.

The targets come from the model, not from a list of projection names: the blocks are the language
model's blocks as FSDP wraps them (:meth:`ModelAdapter.block_classes`), so Qwen3.5's linear-attention
projections, GLM's fused ``gate_up_proj`` and any other family's own layer names are adapted too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tpo.errors import ConfigError
from tpo.models import ModelAdapter


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05


def language_blocks(model: nn.Module, adapter: ModelAdapter) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of the language model's blocks, in order."""
    classes = tuple(adapter.block_classes(model))
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, classes) and adapter.part_of(name) == "language_model"]


def block_kinds(model: nn.Module, num_blocks: int) -> list[str]:
    """Each language-model block's layer type (``full_attention``, ``linear_attention``, ...) from the
    config's ``layer_types``; a config without them is all full attention (as :mod:`tpo.scoring` reads it)."""
    types = getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"] * num_blocks
    if len(types) != num_blocks:
        raise ValueError(f"{type(model).__name__}: found {num_blocks} language-model blocks, but its config "
                         f"names {len(types)} layer types")
    return list(types)


def lora_targets(model: nn.Module, adapter: ModelAdapter) -> dict[str, list[list[str]]]:
    """Every linear layer inside the language model's blocks: ``{block kind: [each block's layer names]}``."""
    blocks = language_blocks(model, adapter)
    targets: dict[str, list[list[str]]] = {}
    for (name, block), kind in zip(blocks, block_kinds(model, len(blocks))):
        linear = [f"{name}.{sub}" for sub, m in block.named_modules() if isinstance(m, nn.Linear)]
        targets.setdefault(kind, []).append(linear)
    return targets


def describe_targets(targets: dict[str, list[list[str]]]) -> str:
    """The adapted layers per block kind, for a run's summary."""
    def kind(name: str, blocks: list[list[str]]) -> str:
        layers = sum(map(len, blocks))
        return f"{layers} linear layers in {len(blocks)} {name} block{'s' if len(blocks) != 1 else ''}"

    return ", ".join(kind(name, blocks) for name, blocks in targets.items())


def add_lora(model, adapter: ModelAdapter, settings: LoraSettings | dict):
    """Wrap ``model`` with LoRA adapters on every linear layer of its language model's blocks; only they train."""
    from peft import LoraConfig, get_peft_model

    if isinstance(settings, dict):  # as the CLI and saved hyper-parameters hand it over
        settings = LoraSettings(**settings)
    names = [name for blocks in lora_targets(model, adapter).values() for block in blocks for name in block]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no linear layer in its language model's blocks for LoRA")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=names)
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")
