"""The builders of the tiny models (:mod:`tpo.synthetic.tiny_models`), one ``build_<family>`` per family.

Each returns ``(model, processor)`` made only from ``transformers`` config classes, a byte-level BPE
tokenizer trained here with ``tokenizers`` and the family's real processor classes, so every code path
that loads a real checkpoint runs unchanged on them. The processor carries the released checkpoint's
chat template (:func:`chat_template`), and the tokenizer has every special token that template writes.
"""

from __future__ import annotations

from importlib import resources

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tpo.synthetic.world import CORPUS

FRAME_SIZE = 32  # pixels; every tiny vision tower sees 32x32 frames in 8x8 patches
PATCH = 8

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chat_template(family: str) -> str:
    """The chat template of ``family``'s released checkpoint, as the tiny model carries it:
    ``chat_templates/<family>.jinja`` (where each was copied from: ``chat_templates/SOURCES.json``).
    LongVA's is :data:`tpo.convert.CHAT_TEMPLATE`, the one ``tpo convert longva`` writes."""
    if family == "longva":
        from tpo.convert import CHAT_TEMPLATE

        return CHAT_TEMPLATE
    return (resources.files("tpo.synthetic") / "chat_templates" / f"{family}.jinja").read_text(encoding="utf-8")


def build_tokenizer(specials: list[str], eos: str, pad: str, extra: dict[str, str],
                    corpus: list[str] = CORPUS, bos: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus`` (the synthetic world's sentences by default);
    any text still encodes. ``specials`` are the released tokenizer's special tokens the chat template
    writes, each one token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos,
                                   extra_special_tokens=extra)


def _text_config_kwargs(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    )


def build_llava_onevision(corpus: list[str] = CORPUS, text: dict | None = None, vision: dict | None = None):
    """``text`` / ``vision`` override the tiny sizes (the toy base model is a little larger)."""
    from transformers import (
        LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor, Qwen2Config, SiglipVisionConfig,
    )

    tok = build_tokenizer(_QWEN_SPECIALS + ["<image>", "<video>"], "<|im_end|>", "<|endoftext|>",
                          {"image_token": "<image>", "video_token": "<video>"}, corpus)
    vision = SiglipVisionConfig(**{**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2), **(vision or {})},
                                image_size=FRAME_SIZE, patch_size=PATCH)
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=Qwen2Config(**{**_text_config_kwargs(len(tok)), **(text or {})}),
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
        image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]], vision_feature_layer=-1,
    )
    size = {"height": FRAME_SIZE, "width": FRAME_SIZE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]]),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok, num_image_tokens=(FRAME_SIZE // PATCH) ** 2, vision_feature_select_strategy="full",
        chat_template=chat_template("llava_onevision"),
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


_QWEN_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
_QWEN_VISION_IDS = ["vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"]
# Frames are resized to FRAME_SIZE x FRAME_SIZE (the pixel budget is per frame with the cap on).
_QWEN_PATCHES = dict(size={"shortest_edge": FRAME_SIZE * FRAME_SIZE, "longest_edge": FRAME_SIZE * FRAME_SIZE},
                     patch_size=PATCH, temporal_patch_size=2, merge_size=2)


def _qwen_tokenizer(extra: tuple[str, ...] = ()) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    """The Qwen-VL tokenizer and the vision token ids its model config names."""
    tok = build_tokenizer(_QWEN_SPECIALS + _QWEN_VISION_TOKENS + list(extra), "<|im_end|>", "<|endoftext|>",
                          {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    return tok, {name: tok.convert_tokens_to_ids(t) for name, t in zip(_QWEN_VISION_IDS, _QWEN_VISION_TOKENS)}


def _mrope_parameters(text: dict, ratio: tuple[int, int, int], partial_rotary_factor: float = 1.0) -> dict:
    """Multimodal rotary parameters splitting each head's rotary frequencies (t, h, w) in ``ratio``;
    ``partial_rotary_factor`` < 1 rotates only that share of each head."""
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    half = int(head_dim * partial_rotary_factor) // 2
    t, h, _ = (half * r // sum(ratio) for r in ratio)
    params = {"rope_type": "default", "mrope_section": [t, h, half - t - h], "rope_theta": 10000.0}
    return params if partial_rotary_factor == 1.0 else {**params, "partial_rotary_factor": partial_rotary_factor}


def _qwen_processor(processor_class, video_processor, tok, family: str):
    from transformers import Qwen2VLImageProcessor

    return processor_class(
        image_processor=Qwen2VLImageProcessor(**_QWEN_PATCHES), video_processor=video_processor, tokenizer=tok,
        chat_template=chat_template(family),
    )


def _build_qwen_vl(version: str):
    from transformers import Qwen2VLVideoProcessor

    if version == "2":
        from transformers import Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model
        from transformers import Qwen2VLProcessor as Processor
    else:
        from transformers import Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model
        from transformers import Qwen2_5_VLProcessor as Processor

    tok, ids = _qwen_tokenizer()
    text = _text_config_kwargs(len(tok))
    vision = dict(depth=1, num_heads=2, patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        vision.update(embed_dim=32, hidden_size=text["hidden_size"], mlp_ratio=2)
    else:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=text["hidden_size"],
                      window_size=2 * PATCH * 2, fullatt_block_indexes=[0])
    config = Config(text_config=dict(**text, rope_parameters=_mrope_parameters(text, (2, 3, 3))),
                    vision_config=vision, **ids)
    video = Qwen2VLVideoProcessor(**_QWEN_PATCHES, cap_pixels_per_frame=True)
    return Model(config), _qwen_processor(Processor, video, tok, "qwen2_vl" if version == "2" else "qwen2_5_vl")


def build_qwen2_vl():
    return _build_qwen_vl("2")


def build_qwen2_5_vl():
    return _build_qwen_vl("2.5")


def build_qwen3_vl():
    """Qwen3-VL: deepstack vision features, interleaved M-RoPE, and a ``<t seconds>`` timestamp
    (from the video's fps) before each temporal patch of the video, which the processor writes."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tok, ids = _qwen_tokenizer()
    text = {**_text_config_kwargs(len(tok)), "head_dim": 32}  # its config defaults head_dim to 128
    text["rope_parameters"] = {**_mrope_parameters(text, (6, 5, 5)), "mrope_interleaved": True}
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=text["hidden_size"],
                  num_position_embeddings=(FRAME_SIZE // PATCH) ** 2, deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    video = Qwen3VLVideoProcessor(**_QWEN_PATCHES, cap_pixels_per_frame=True)
    return Qwen3VLForConditionalGeneration(config), _qwen_processor(Qwen3VLProcessor, video, tok, "qwen3_vl")


_GLM_SPECIALS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
_GLM_VISION_TOKENS = {"image_start_token_id": "<|begin_of_image|>", "image_end_token_id": "<|end_of_image|>",
                      "video_start_token_id": "<|begin_of_video|>", "video_end_token_id": "<|end_of_video|>",
                      "image_token_id": "<|image|>", "video_token_id": "<|video|>"}


def build_glm4v():
    """GLM-4.1V: each temporal patch of 2 frames is an image of its own, followed by its time in whole
    seconds as text (the processor writes it from ``video_metadata``); the video's frames share one
    pixel budget, like the released video processor's."""
    from transformers import (
        Glm4vConfig, Glm4vForConditionalGeneration, Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor,
    )

    tok = build_tokenizer(_GLM_SPECIALS + list(_GLM_VISION_TOKENS.values()), "<|endoftext|>", "<|endoftext|>",
                          {"image_token": "<|image|>", "video_token": "<|video|>"})
    text = _text_config_kwargs(len(tok))
    text["rope_parameters"] = _mrope_parameters(text, (2, 3, 3), partial_rotary_factor=0.5)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, image_size=FRAME_SIZE, patch_size=PATCH,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text["hidden_size"])
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in _GLM_VISION_TOKENS.items()}
    config = Glm4vConfig(text_config=text, vision_config=vision, **ids)
    # 8 frames of FRAME_SIZE x FRAME_SIZE fill the budget; more frames are shrunk to fit it.
    patches = dict(patch_size=PATCH, temporal_patch_size=2, merge_size=2)
    budget = {"shortest_edge": FRAME_SIZE * FRAME_SIZE, "longest_edge": 8 * FRAME_SIZE * FRAME_SIZE}
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(size=budget, **patches),
        video_processor=Glm4vVideoProcessor(size=budget, **patches), tokenizer=tok,
        chat_template=chat_template("glm4v"),
    )
    return Glm4vForConditionalGeneration(config), processor


def build_qwen3_5():
    """Qwen3.5: a hybrid decoder (Gated DeltaNet linear-attention layers with a full-attention layer
    every few), partial rotary M-RoPE, and Qwen3-VL's vision side and processor (a ``<t seconds>``
    timestamp before each temporal patch), without deepstack."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tok, ids = _qwen_tokenizer(extra=("<think>", "</think>"))
    text = {**_text_config_kwargs(len(tok)), "head_dim": 32, "layer_types": ["linear_attention", "full_attention"],
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
            "linear_num_value_heads": 4}
    # the released model rotates a quarter of a 256-dim head; half of a 32-dim one leaves t, h, w a few frequencies
    text["rope_parameters"] = {**_mrope_parameters(text, (3, 3, 2), partial_rotary_factor=0.5), "mrope_interleaved": True}
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=text["hidden_size"],
                  num_position_embeddings=(FRAME_SIZE // PATCH) ** 2)
    config = Qwen3_5Config(text_config=text, vision_config=vision, **ids)
    video = Qwen3VLVideoProcessor(**_QWEN_PATCHES, cap_pixels_per_frame=True)
    return Qwen3_5ForConditionalGeneration(config), _qwen_processor(Qwen3VLProcessor, video, tok, "qwen3_5")


def build_llava_next_video():
    from transformers import (
        CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessor, LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor,
    )

    tok = build_tokenizer(["<unk>", "<s>", "</s>", "<image>", "<video>"], "</s>", "<unk>",
                          {"image_token": "<image>", "video_token": "<video>"})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=FRAME_SIZE, patch_size=PATCH)
    config = LlavaNextVideoConfig(
        vision_config=vision, text_config=LlamaConfig(**_text_config_kwargs(len(tok))),
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
        image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]], vision_feature_layer=-1,
        vision_feature_select_strategy="default", spatial_pool_stride=2,
    )
    crop = {"height": FRAME_SIZE, "width": FRAME_SIZE}
    resize = {"shortest_edge": FRAME_SIZE}
    processor = LlavaNextVideoProcessor(
        image_processor=LlavaNextImageProcessor(size=resize, crop_size=crop, image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]]),
        video_processor=LlavaNextVideoVideoProcessor(size=resize, crop_size=crop),
        tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        chat_template=chat_template("llava_next_video"),
    )
    return LlavaNextVideoForConditionalGeneration(config), processor


def build_internvl():
    """InternVL3/3.5: an InternViT tower, pixel shuffle (downsample ratio 0.5: the 4x4 patch grid of a
    32x32 frame becomes 4 tokens) and an MLP projector into a Qwen2 language model; the processor writes
    each frame as its own image block, ``FrameN: <img>...</img>``."""
    from transformers import (
        GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor,
        InternVLVideoProcessor, InternVLVisionConfig, Qwen2Config,
    )

    image_tokens = {"start_image_token": "<img>", "end_image_token": "</img>",
                    "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    tok = build_tokenizer(_QWEN_SPECIALS + list(image_tokens.values()), "<|im_end|>", "<|endoftext|>", image_tokens)
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=FRAME_SIZE, patch_size=PATCH)
    downsample_ratio = 0.5
    tokens_per_frame = int((FRAME_SIZE // PATCH * downsample_ratio) ** 2)
    config = InternVLConfig(
        vision_config=vision, text_config=Qwen2Config(**_text_config_kwargs(len(tok))),
        image_token_id=tok.context_image_token_id, image_seq_length=tokens_per_frame,
        downsample_ratio=downsample_ratio, tie_word_embeddings=False,
    )
    size = {"height": FRAME_SIZE, "width": FRAME_SIZE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
        video_processor=InternVLVideoProcessor(size=size), tokenizer=tok, image_seq_length=tokens_per_frame,
        chat_template=chat_template("internvl"),
    )
    return InternVLForConditionalGeneration(config), processor


_GEMMA4_TOKENS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                  "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
# The config's name for each token's id (the audio ones only name tokens: the tiny model has no audio tower).
_GEMMA4_IDS = {"image_token": "image_token_id", "boi_token": "boi_token_id", "eoi_token": "eoi_token_id",
               "audio_token": "audio_token_id", "boa_token": "boa_token_id", "eoa_token": "eoa_token_index"}
# The other special tokens Gemma 4's chat template writes: turns, the thinking switch and thought channel,
# tool declarations, calls and responses, and the string escape.
_GEMMA4_TEMPLATE_TOKENS = ["<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>", "<|tool>", "<tool|>",
                           "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>']


def build_gemma4():
    """Gemma 4: sliding-window layers (a 16-token window, so packed rows run past it) alternating with
    global ones, vision tokens attending bidirectionally within their frame on the sliding layers
    (``use_bidirectional_attention="vision"``), per-layer input embeddings, and an ``mm:ss`` timestamp
    before each frame, which the processor writes. No audio tower (video needs none)."""
    from transformers import (
        Gemma4AudioFeatureExtractor, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4ImageProcessor,
        Gemma4Processor, Gemma4VideoProcessor,
    )

    # eos <eos>, as in the releases whose turn ends with another token (<turn|>): the chat template says which
    tok = build_tokenizer(["<pad>", "<eos>", "<bos>", *_GEMMA4_TEMPLATE_TOKENS, *_GEMMA4_TOKENS.values(), "<|video|>"],
                          "<eos>", "<pad>", _GEMMA4_TOKENS, bos="<bos>")
    ids = {name: tok.convert_tokens_to_ids(_GEMMA4_TOKENS[key]) for key, name in _GEMMA4_IDS.items()}
    text = dict(**_text_config_kwargs(len(tok)), head_dim=32, global_head_dim=32, sliding_window=16,
                layer_types=["sliding_attention", "full_attention"],
                use_bidirectional_attention="vision", hidden_size_per_layer_input=16,
                vocab_size_per_layer_input=len(tok), pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=tok.convert_tokens_to_ids("<bos>"))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, patch_size=PATCH, pooling_kernel_size=2,
                  position_embedding_size=64)
    config = Gemma4Config(text_config=text, vision_config=vision,
                          video_token_id=tok.convert_tokens_to_ids("<|video|>"), **ids)
    # Gemma 4 resizes each frame to its soft-token budget (at least 70 tokens: 8x8 here), whatever its size.
    patches = dict(patch_size=PATCH, pooling_kernel_size=2, max_soft_tokens=70)
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=Gemma4ImageProcessor(**patches),
        tokenizer=tok, video_processor=Gemma4VideoProcessor(**patches), chat_template=chat_template("gemma4"),
    )
    return Gemma4ForConditionalGeneration(config), processor


def build_longva():
    """LongVA as :mod:`tpo.models.longva` holds it: CLIP features from layer -2 without CLS, CLIP
    preprocessing (shortest-edge resize, center crop) and LongVA's own chat template."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaOnevisionVideoProcessor, Qwen2Config

    from tpo.models.longva import LongvaConfig, LongvaForConditionalGeneration, LongvaProcessor

    tok = build_tokenizer(_QWEN_SPECIALS + ["<image>", "<video>"], "<|im_end|>", "<|endoftext|>",
                          {"image_token": "<image>", "video_token": "<video>"})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=FRAME_SIZE, patch_size=PATCH)
    config = LongvaConfig(
        vision_config=vision, text_config=Qwen2Config(**_text_config_kwargs(len(tok))),
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    resize, crop = {"shortest_edge": FRAME_SIZE}, {"height": FRAME_SIZE, "width": FRAME_SIZE}
    processor = LongvaProcessor(
        image_processor=CLIPImageProcessor(size=resize, crop_size=crop),
        video_processor=LlavaOnevisionVideoProcessor(size=resize, crop_size=crop, do_center_crop=True),
        tokenizer=tok, num_image_tokens=(FRAME_SIZE // PATCH) ** 2, vision_feature_select_strategy="default",
        chat_template=chat_template("longva"),
    )
    return LongvaForConditionalGeneration(config), processor


BUILDERS = {
    "llava_onevision": build_llava_onevision,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
    "qwen3_5": build_qwen3_5,
    "llava_next_video": build_llava_next_video,
    "glm4v": build_glm4v,
    "internvl": build_internvl,
    "gemma4": build_gemma4,
    "longva": build_longva,
}
