"""Supported video-LMM families. Add a family by adding one :class:`ModelAdapter` here."""

from dataclasses import replace

from tpo.errors import ConfigError
from tpo.models import longva as _longva  # noqa: F401  registers LongVA with the transformers Auto classes
from tpo.models.adapter import IGNORE_INDEX, PARTS, ModelAdapter, PromptEncoding, pad_token_id

_LLAVA_PARTS = {
    "vision_tower": ("model.vision_tower",),
    "projector": ("model.multi_modal_projector", "model.image_newline", "model.vision_resampler"),
    "language_model": ("model.language_model", "lm_head"),
}
_QWEN_PARTS = {
    "vision_tower": ("model.visual",),
    "projector": ("model.visual.merger",),
    "language_model": ("model.language_model", "lm_head"),
}
# Qwen3-VL also projects intermediate vision features into the first decoder layers (deepstack).
_QWEN3_PARTS = {**_QWEN_PARTS, "projector": ("model.visual.merger", "model.visual.deepstack_merger_list")}

FAMILIES: dict[str, ModelAdapter] = {
    a.family: a
    for a in [
        ModelAdapter("llava_onevision", ("llava_onevision",), _LLAVA_PARTS,
                     "LLaVA-OneVision and LLaVA-Video (LlavaOnevisionForConditionalGeneration)"),
        ModelAdapter("qwen2_vl", ("qwen2_vl",), _QWEN_PARTS, "Qwen2-VL"),
        ModelAdapter("qwen2_5_vl", ("qwen2_5_vl",), _QWEN_PARTS, "Qwen2.5-VL"),
        ModelAdapter("qwen3_vl", ("qwen3_vl",), _QWEN3_PARTS, "Qwen3-VL (Qwen3VLForConditionalGeneration)"),
        ModelAdapter("llava_next_video", ("llava_next_video",), _LLAVA_PARTS, "LLaVA-NeXT-Video"),
        ModelAdapter("longva", ("longva",), _LLAVA_PARTS, "LongVA (converted with `python -m tpo.convert longva`)"),
    ]
}


def get_adapter(family: str, time_instruction: bool = False) -> ModelAdapter:
    """The family's adapter; ``time_instruction`` adds LLaVA-Video's sentence on the frames' times to
    every prompt (the prompt LLaVA-Video was trained with; see the README)."""
    if family not in FAMILIES:
        known = ", ".join(f"{name} ({a.description})" for name, a in FAMILIES.items())
        raise ConfigError(f"unknown model family {family!r}; supported families: {known}")
    return replace(FAMILIES[family], time_instruction=time_instruction)


__all__ = ["FAMILIES", "IGNORE_INDEX", "PARTS", "ModelAdapter", "PromptEncoding", "get_adapter", "pad_token_id"]
