"""LongVA as a ``transformers`` model: LLaVA-OneVision's video path, less the newline after each video.

LongVA (``llava_qwen`` with ``mm_patch_merge_type="unires"``) runs CLIP (layer -2, CLS dropped), the
``mlp2x_gelu`` projector and ``avg_pool2d(2)`` per frame, then concatenates the frames: the order and
operations of ``LlavaOnevisionModel.get_video_features`` (its bilinear halving of an even grid is
``avg_pool2d(2)``), except that OneVision appends ``image_newline`` after each video and its processor
counts that token. These classes differ from OneVision's only there. Video only: LongVA's image path
(``unires`` pooling of anyres crops) is a different computation and is refused.
"""

import torch
from torch import nn
from transformers import (
    AutoConfig, AutoModelForImageTextToText, AutoProcessor, LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel, LlavaOnevisionProcessor,
)
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionPreTrainedModel


class LongvaConfig(LlavaOnevisionConfig):
    model_type = "longva"


class LongvaModel(LlavaOnevisionModel):
    config_class = LongvaConfig

    def __init__(self, config: LongvaConfig):
        super().__init__(config)
        # LongVA has no newline weight; OneVision's video code still appends one, which is dropped below.
        del self.image_newline
        self.register_buffer("image_newline", torch.zeros(config.text_config.hidden_size), persistent=False)

    def get_image_features(self, *args, **kwargs):
        raise NotImplementedError("LongVA models take videos only here: its image path (unires) is not implemented")

    # Named like OneVision's: generation finds the video inputs of this method by its signature.
    def get_video_features(self, pixel_values_videos, vision_feature_layer=None, vision_feature_select_strategy=None,
                           **kwargs):
        out = super().get_video_features(pixel_values_videos, vision_feature_layer=vision_feature_layer,
                                         vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)
        out.pooler_output = out.pooler_output[:, :-1]
        return out


class LongvaForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    config_class = LongvaConfig

    def __init__(self, config: LongvaConfig):
        LlavaOnevisionPreTrainedModel.__init__(self, config)  # not OneVision's own __init__: it builds its inner model
        self.model = LongvaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


class LongvaProcessor(LlavaOnevisionProcessor):
    """OneVision's processor with one placeholder per pooled patch of each frame, and no newline one."""

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        return super().replace_video_token(video_inputs, video_idx, **kwargs)[len(self.video_token):]

    # internal: transformers' hook for the placeholder counts vLLM-style callers ask for; it too counts the newline
    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs):
        data = super()._get_num_multimodal_tokens(image_sizes, video_sizes, **kwargs)
        if "num_video_tokens" in data:
            data.num_video_tokens = [n - 1 for n in data.num_video_tokens]
        return data


AutoConfig.register(LongvaConfig.model_type, LongvaConfig, exist_ok=True)
AutoModelForImageTextToText.register(LongvaConfig, LongvaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LongvaConfig, LongvaProcessor, exist_ok=True)
