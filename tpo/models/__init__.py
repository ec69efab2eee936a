"""Supported video-LMM families. Add a family by adding one :class:`ModelAdapter` here."""

from dataclasses import replace

from tpo.errors import ConfigError
from tpo.models import longva as _longva  # noqa: F401  registers LongVA with the transformers Auto classes
from tpo.models.adapter import IGNORE_INDEX, PARTS, UNUSED, ModelAdapter, PromptEncoding, pad_token_id

# LLaVA's layout, which InternVL shares (vision_tower, multi_modal_projector, language_model, lm_head).
# OneVision appends its image_newline after each video (LongVA holds a zero buffer there instead).
_LLAVA_PARTS = {
    "vision_tower": ("model.vision_tower",),
    "projector": ("model.multi_modal_projector", "model.image_newline"),
    "language_model": ("model.language_model", "lm_head"),
}
# LLaVA-NeXT-Video pools each frame (vision_resampler) before the projector; its image_newline ends image rows only.
_LLAVA_NEXT_VIDEO_PARTS = {
    **_LLAVA_PARTS,
    "projector": ("model.multi_modal_projector", "model.vision_resampler"),
    UNUSED: ("model.image_newline",),
}
_QWEN_PARTS = {
    "vision_tower": ("model.visual",),
    "projector": ("model.visual.merger",),
    "language_model": ("model.language_model", "lm_head"),
}
# Qwen3-VL also projects intermediate vision features into the first decoder layers (deepstack).
_QWEN3_PARTS = {**_QWEN_PARTS, "projector": ("model.visual.merger", "model.visual.deepstack_merger_list")}
# GLM-4V merges 2x2 patches with a convolution into the language model's width, then an MLP (merger).
_GLM4V_PARTS = {**_QWEN_PARTS, "projector": ("model.visual.downsample", "model.visual.merger")}
# Gemma 4's audio tower and its embedder (E2B/E4B checkpoints): video uses neither.
_GEMMA4_PARTS = {
    "vision_tower": ("model.vision_tower",),
    "projector": ("model.embed_vision",),
    "language_model": ("model.language_model", "lm_head"),
    UNUSED: ("model.audio_tower", "model.embed_audio"),
}

FAMILIES: dict[str, ModelAdapter] = {
    a.family: a
    for a in [
        ModelAdapter("llava_onevision", ("llava_onevision",), _LLAVA_PARTS,
                     "LLaVA-OneVision and LLaVA-Video (LlavaOnevisionForConditionalGeneration)"),
        ModelAdapter("qwen2_vl", ("qwen2_vl",), _QWEN_PARTS, "Qwen2-VL"),
        ModelAdapter("qwen2_5_vl", ("qwen2_5_vl",), _QWEN_PARTS, "Qwen2.5-VL"),
        ModelAdapter("qwen3_vl", ("qwen3_vl",), _QWEN3_PARTS, "Qwen3-VL (Qwen3VLForConditionalGeneration)"),
        ModelAdapter("qwen3_5", ("qwen3_5",), _QWEN_PARTS, "Qwen3.5 (Qwen3_5ForConditionalGeneration)"),
        ModelAdapter("llava_next_video", ("llava_next_video",), _LLAVA_NEXT_VIDEO_PARTS, "LLaVA-NeXT-Video"),
        ModelAdapter("glm4v", ("glm4v",), _GLM4V_PARTS, "GLM-4.1V (Glm4vForConditionalGeneration)"),
        ModelAdapter("internvl", ("internvl",), _LLAVA_PARTS, "InternVL3 / InternVL3.5 (InternVLForConditionalGeneration)"),
        ModelAdapter("gemma4", ("gemma4",), _GEMMA4_PARTS, "Gemma 4 (Gemma4ForConditionalGeneration)"),
        ModelAdapter("longva", ("longva",), _LLAVA_PARTS, "LongVA (converted with `python -m tpo.convert longva`)"),
    ]
}


def get_adapter(family: str, time_instruction: bool = False, thinking: bool = False) -> ModelAdapter:
    """The family's adapter; ``time_instruction`` adds LLaVA-Video's sentence on the frames' times to
    every prompt (the prompt LLaVA-Video was trained with; see the README); ``thinking`` is the chat
    template's reasoning mode (off: answers are final answers; see ``ModelAdapter.prompt_text``)."""
    if family not in FAMILIES:
        known = ", ".join(f"{name} ({a.description})" for name, a in FAMILIES.items())
        raise ConfigError(f"unknown model family {family!r}; supported families: {known}")
    return replace(FAMILIES[family], time_instruction=time_instruction, thinking=thinking)


__all__ = ["FAMILIES", "IGNORE_INDEX", "PARTS", "UNUSED", "ModelAdapter", "PromptEncoding", "get_adapter",
           "pad_token_id"]
