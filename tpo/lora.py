"""LoRA (``peft``) on the language model; the reference is then the base model with adapters off."""

from __future__ import annotations

from dataclasses import dataclass, field

from tpo.models import ModelAdapter

LM_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LM_PROJECTIONS))  # inside the language model


def add_lora(model, adapter: ModelAdapter, settings: LoraSettings | dict):
    """Wrap ``model`` with LoRA adapters on the language model's projections; only they train."""
    from peft import LoraConfig, get_peft_model

    if isinstance(settings, dict):  # as the CLI and saved hyper-parameters hand it over
        settings = LoraSettings(**settings)

    prefix = adapter.parts["language_model"][0].replace(".", r"\.")
    pattern = rf"{prefix}\..*\.({'|'.join(settings.target_modules)})"
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=pattern)
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")
