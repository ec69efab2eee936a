"""Convert a released checkpoint into a ``transformers`` directory the Auto classes load.

    tpo convert longva SRC DST [--vision-tower DIR]      (or python -m tpo.convert ...)

``longva``: a LongVA checkpoint (``lmms-lab/LongVA-7B``, ``ruili0/LongVA-7B-TPO``: LLaVA-style
``config.json`` with ``mm_*`` keys, safetensors with LLaVA key names, Qwen2 tokenizer files) becomes a
:mod:`tpo.models.longva` directory. Every weight is mapped or the conversion fails naming it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tpo.errors import ConfigError

CLIP_L_336 = "openai/clip-vit-large-patch14-336"  # the tower LongVA was released with
CLIP_L_336_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
SYSTEM_PROMPT = "You are a helpful assistant."
# LongVA's conv_templates["qwen_1_5"] (conversation.py, SeparatorStyle.CHATML) with the video first in the
# user turn, as its README and lmms-eval build the question: "<image>\n" + question.
CHAT_TEMPLATE = (
    "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '" + SYSTEM_PROMPT + "' %}"
    "{% if system is not string %}{% set system = system | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}{% endif %}"
    "<|im_start|>system\n{{ system }}<|im_end|>\n"
    "{% for m in messages if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'video' %}<video>\n{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# LongVA parameter prefix -> ours (LongvaForConditionalGeneration)
KEY_PREFIXES = {
    "model.vision_tower.vision_tower.vision_model.": "model.vision_tower.",
    "model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
    "model.mm_projector.2.": "model.multi_modal_projector.linear_2.",
    "model.embed_tokens.": "model.language_model.embed_tokens.",
    "model.layers.": "model.language_model.layers.",
    "model.norm.": "model.language_model.norm.",
    "lm_head.": "lm_head.",
}
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
             "attention_dropout", "bos_token_id", "eos_token_id")


def _require(config: dict, file: Path, key: str, allowed) -> None:
    value = config.get(key)
    if value not in allowed:
        raise ConfigError(f"{file}: {key} is {value!r}; LongVA conversion supports {list(allowed)}")


def read_longva_config(src: Path) -> dict:
    """LongVA's config.json, checked for the settings the converted model reproduces exactly."""
    file = src / "config.json"
    if not file.is_file():
        raise ConfigError(f"{file}: not found; SRC must be a LongVA checkpoint directory")
    config = json.loads(file.read_text())
    if config.get("model_type") != "llava_qwen" or "mm_vision_tower" not in config:
        raise ConfigError(f"{file}: not a LongVA checkpoint (model_type {config.get('model_type')!r}, "
                          f"expected 'llava_qwen' with mm_vision_tower)")
    if config.get("mm_projector_type") != "mlp2x_gelu":
        raise ConfigError(f"{file}: unknown projector type {config.get('mm_projector_type')!r}; only 'mlp2x_gelu' "
                          f"(linear, GELU, linear) converts")
    _require(config, file, "mm_vision_select_feature", ["patch"])
    _require(config, file, "mm_patch_merge_type", ["unires", "flat"])  # both flatten a video's frames
    _require(config, file, "mm_spatial_pool_mode", ["average"])
    _require(config, file, "mm_spatial_pool_stride", [2])  # OneVision halves the grid: avg_pool2d(2)
    _require(config, file, "mm_resampler_type", [None])
    for flag in ("mm_use_im_start_end", "use_sliding_window", "s2"):
        _require(config, file, flag, [None, False])
    if not isinstance(config.get("mm_vision_select_layer"), int):
        raise ConfigError(f"{file}: mm_vision_select_layer must be an integer layer index")
    return config


def vision_tower_dir(src: Path, config: dict, override: str | None) -> Path | None:
    """The local directory of the CLIP tower (its config.json), or None for the released ViT-L/14-336."""
    name = override or config["mm_vision_tower"]
    for candidate in (Path(name), src / name):
        if (candidate / "config.json").is_file():
            return candidate
    if name == CLIP_L_336:
        return None
    raise ConfigError(f"{src / 'config.json'}: mm_vision_tower {name!r} is neither a local CLIP directory nor "
                      f"{CLIP_L_336!r}; pass --vision-tower DIR")


def vision_parts(tower: Path | None):
    """``(CLIPVisionConfig, image processor, video processor)``: CLIP preprocessing (shortest-edge resize,
    center crop, CLIP mean/std), from the tower's preprocessor_config.json when it has one."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaOnevisionVideoProcessor

    vision = CLIPVisionConfig(**CLIP_L_336_CONFIG) if tower is None else CLIPVisionConfig.from_pretrained(tower)
    size = {"shortest_edge": vision.image_size}
    crop = {"height": vision.image_size, "width": vision.image_size}
    settings = {}
    if tower is not None and (tower / "preprocessor_config.json").is_file():
        clip = CLIPImageProcessor.from_pretrained(tower)
        size, crop = dict(clip.size), dict(clip.crop_size)
        settings = dict(image_mean=clip.image_mean, image_std=clip.image_std, resample=clip.resample,
                        rescale_factor=clip.rescale_factor)
    return (vision, CLIPImageProcessor(size=size, crop_size=crop, **settings),
            LlavaOnevisionVideoProcessor(size=size, crop_size=crop, do_center_crop=True, **settings))


def read_weights(src: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{src}: no *.safetensors weights (LongVA checkpoints ship safetensors)")
    weights = {}
    for file in files:
        weights.update(load_file(file))
    return weights


def map_weights(weights: dict, src: Path) -> dict:
    mapped = {}
    for key, tensor in weights.items():
        prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise ConfigError(f"{src}: weight {key!r} has no counterpart in the converted model")
        mapped[KEY_PREFIXES[prefix] + key[len(prefix):]] = tensor
    return mapped


def longva_tokenizer(src: Path, vocab_size: int):
    """LongVA's Qwen2 tokenizer plus the <image>/<video> placeholders; <|im_end|> ends a turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>"})
    tokenizer.add_tokens(["<image>", "<video>"], special_tokens=True)
    for token in ("<image>", "<video>"):
        if tokenizer.convert_tokens_to_ids(token) >= vocab_size:
            raise ConfigError(f"{src}: no free embedding row for {token} (vocab_size {vocab_size}, "
                              f"tokenizer has {len(tokenizer)} tokens)")
    return tokenizer


def convert_longva(src: str | Path, dst: str | Path, vision_tower: str | None = None) -> Path:
    import torch
    from transformers import Qwen2Config

    from tpo.models.longva import LongvaConfig, LongvaForConditionalGeneration, LongvaProcessor

    src, dst = Path(src), Path(dst)
    config = read_longva_config(src)
    vision, image_processor, video_processor = vision_parts(vision_tower_dir(src, config, vision_tower))
    text = Qwen2Config(**{k: config[k] for k in TEXT_KEYS if k in config},
                       rope_parameters={"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)})
    tokenizer = longva_tokenizer(src, text.vocab_size)
    model_config = LongvaConfig(
        vision_config=vision, text_config=text, vision_feature_layer=config["mm_vision_select_layer"],
        vision_feature_select_strategy="default", image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"), tie_word_embeddings=text.tie_word_embeddings,
    )
    weights = map_weights(read_weights(src), src)
    with torch.device("meta"):
        model = LongvaForConditionalGeneration(model_config)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if text.tie_word_embeddings else set())
    missing = sorted(expected - set(weights))
    if missing:
        raise ConfigError(f"{src}: weight(s) missing from the checkpoint: {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    model.load_state_dict(weights, strict=not text.tie_word_embeddings, assign=True)
    if text.tie_word_embeddings:
        model.tie_weights()
    model.config.dtype = next(iter(weights.values())).dtype
    model.save_pretrained(dst)
    LongvaProcessor(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer,
                    num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
                    vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE).save_pretrained(dst)
    return dst


CONVERTERS = {"longva": convert_longva}


def main(argv: list[str] | None = None, prog: str = "python -m tpo.convert") -> int:
    from tpo.errors import status_of

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(CONVERTERS))
    parser.add_argument("src", help="the released checkpoint directory")
    parser.add_argument("dst", help="where to write the converted model")
    parser.add_argument("--vision-tower", help="local CLIP directory, when config.json's mm_vision_tower is not one")
    args = parser.parse_args(argv)
    return status_of(lambda: print(CONVERTERS[args.family](args.src, args.dst, args.vision_tower)))


if __name__ == "__main__":
    from tpo.clean_exit import run_and_exit

    run_and_exit(main)
