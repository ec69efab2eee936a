"""The largest activation tensors of one TPO training step, estimated from a model's config alone (nothing runs).

One preference pair per device, ``frames`` video frames, bf16 compute (2 bytes), activation checkpointing per
block (as :class:`tpo.sharding.FSDP2Strategy` trains), the vision tower frozen (the default ``trainable``), in
either layout :mod:`tpo.scoring` can choose:

- ``shared_prefix``: one row ``[prompt][chosen][rejected]`` (:mod:`tpo.shared_prefix`);
- ``two_pass``: two rows ``[prompt][chosen]`` and ``[prompt][rejected]``, padded to the longer (:mod:`tpo.two_pass`).

What is counted, in bytes (an estimate of the big terms, not of every buffer the kernels allocate):

- ``block_inputs``: each language-model block's input, which checkpointing keeps for the backward pass;
- ``block_recompute``: one block's activations while backward recomputes it: q, k, v, the attention output and
  the MLP's gate, up and activated tensors, ``tokens * (4 * hidden + 3 * intermediate)`` (a flash/SDPA kernel
  keeps no ``L x L`` scores);
- ``pair_mask``: the shared-prefix layout's dense ``L x L`` boolean mask, one per layer type (Gemma 4's sliding
  and full layers each get one); none in the two-row layout. The transient copies the mask builders make on the
  way are not counted;
- ``vision_block``: one vision block's activations in its (gradient-free) forward, on the patches before merging;
- ``logits``: what the scoring code makes over the vocabulary: the LM head's bf16 output at the positions
  :func:`logit_positions` gives, then an fp32 copy and the fp32 log-softmax (2 + 4 + 4 bytes per position and
  vocabulary entry);
- ``naive_logits``: the same over every position of every row, as TRL's layout computes it (for comparison only:
  no code path of tpo's training makes it).

Video tokens per frame (:func:`video_tokens`) follow each family's own video path, from the config; families
with dynamic resolution see frames of ``FRAME`` x ``FRAME`` pixels (an assumption, stated here). The prompt's
text (chat template, question, per-frame timestamps or labels) is taken as ``PROMPT_TEXT`` tokens and each answer
as ``ANSWER`` tokens (``answer.max_new_tokens`` 256 plus the end-of-turn token).
"""

from __future__ import annotations

import math

from tpo.scoring import SHARED_PREFIX, TWO_PASS

BF16, FP32 = 2, 4
FRAME = 448  # pixels per side for dynamic-resolution families (a multiple of 28 and of 32: no resizing)
PROMPT_TEXT = 256
ANSWER = 257


def square(size) -> int:
    """A square size given as one number or as ``[height, width]`` (InternVL's vision config)."""
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def video_tokens(family: str, config, frames: int = 32) -> int:
    """Tokens one video of ``frames`` frames takes in the language model's input, for the family's video path."""
    vision = config.vision_config
    if family in ("qwen2_vl", "qwen2_5_vl", "glm4v", "qwen3_vl", "qwen3_5"):
        # 3-D patches of temporal_patch_size frames, spatial_merge_size**2 patches merged into one token
        patch = vision.patch_size
        merge = vision.spatial_merge_size
        per_group = (FRAME // (patch * merge)) ** 2
        return math.ceil(frames / vision.temporal_patch_size) * per_group
    if family in ("llava_onevision", "longva"):
        # the frame's patch grid halved by bilinear pooling (OneVision's get_video_features; LongVA: avg_pool2d(2))
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        return frames * side * side + (1 if family == "llava_onevision" else 0)  # OneVision: one newline per video
    if family == "llava_next_video":
        side = vision.image_size // vision.patch_size // config.spatial_pool_stride
        return frames * side * side
    if family == "internvl":
        # one 448 x 448 tile per frame, pixel-shuffled by downsample_ratio
        return frames * int(square(vision.image_size) // square(vision.patch_size) * config.downsample_ratio) ** 2
    if family == "gemma4":
        return frames * config.vision_soft_tokens_per_image  # each frame at the image budget: an upper bound
    raise ValueError(f"no video-token rule for family {family!r}")


def vision_patches(family: str, config, frames: int = 32) -> int:
    """Patches the vision tower runs over (before any merging or pooling)."""
    vision = config.vision_config
    if family in ("qwen2_vl", "qwen2_5_vl", "glm4v", "qwen3_vl", "qwen3_5"):
        return math.ceil(frames / vision.temporal_patch_size) * (FRAME // vision.patch_size) ** 2
    if family == "gemma4":
        return frames * config.vision_soft_tokens_per_image * vision.pooling_kernel_size ** 2
    return frames * (square(vision.image_size) // square(vision.patch_size)) ** 2


def logit_positions(layout: str, prompts: list[int], answers: list[list[int]]) -> int:
    """Positions the LM head runs on for a batch (``prompts[i]`` tokens, then ``answers[i]``), as the scoring code
    asks for them: the packed layout keeps the logits from the earliest position that predicts a response token to
    the end of the padded row (``tpo.shared_prefix.answer_logps``: ``logits_to_keep``); the two-row layout gathers
    the hidden states of the positions whose next token is labelled (``tpo.two_pass.per_answer_logps``)."""
    if layout == SHARED_PREFIX:
        length = max(p + sum(a) for p, a in zip(prompts, answers))
        return len(prompts) * (length - (min(prompts) - 1))
    if layout == TWO_PASS:
        return sum(sum(a) for a in answers)
    raise ValueError(layout)


def rows(layout: str, prompt: int, answers: tuple[int, ...]) -> list[int]:
    """The padded lengths of the rows one pair makes."""
    if layout == SHARED_PREFIX:
        return [prompt + sum(answers)]
    return [prompt + max(answers)] * len(answers)


def estimate(family: str, config, layout: str, frames: int = 32, answers: tuple[int, ...] = (ANSWER, ANSWER),
             prompt_text: int = PROMPT_TEXT) -> dict[str, int]:
    """Bytes of the step's largest activation tensors (see the module's docstring), by name."""
    text = config.get_text_config()
    vision = config.vision_config
    prompt = video_tokens(family, config, frames) + prompt_text
    lengths = rows(layout, prompt, answers)
    tokens = sum(lengths)
    hidden, inter, vocab = text.hidden_size, text.intermediate_size, text.vocab_size
    v_hidden = getattr(vision, "embed_dim", None) or vision.hidden_size  # Qwen2-VL's hidden_size is its output width
    v_inter = getattr(vision, "intermediate_size", None) or 4 * v_hidden
    k = logit_positions(layout, [prompt], [list(answers)])
    return {
        "prompt_tokens": prompt,
        "row_tokens": tokens,
        "logit_positions": k,
        "block_inputs": text.num_hidden_layers * tokens * hidden * BF16,
        "block_recompute": tokens * (4 * hidden + 3 * inter) * BF16,
        "pair_mask": len(set(getattr(text, "layer_types", None) or [""])) * sum(n * n for n in lengths)
        if layout == SHARED_PREFIX else 0,
        "vision_block": vision_patches(family, config, frames) * (4 * v_hidden + 2 * v_inter) * BF16,
        "logits": k * vocab * (BF16 + FP32 + FP32),
        "naive_logits": tokens * vocab * (BF16 + FP32 + FP32),
    }


BYTE_TERMS = ("block_inputs", "block_recompute", "pair_mask", "vision_block", "logits")


def total(est: dict[str, int]) -> int:
    """The estimate's peak: everything kept plus the largest transient (vision block or one block's recompute)."""
    return est["block_inputs"] + est["pair_mask"] + est["logits"] + max(est["block_recompute"], est["vision_block"])


def table(configs: dict[str, object], frames: int = 32) -> str:
    """A text table of :func:`estimate` in GiB for ``{family: config}``, both layouts."""
    gib = 2 ** 30
    lines = [f"{'family':18}{'layout':15}{'prompt':>8}{'logit pos':>10}{'blocks GiB':>11}{'logits GiB':>11}"
             f"{'naive GiB':>10}{'total GiB':>10}"]
    for family, config in configs.items():
        for layout in (SHARED_PREFIX, TWO_PASS):
            e = estimate(family, config, layout, frames)
            lines.append(f"{family:18}{layout:15}{e['prompt_tokens']:>8}{e['logit_positions']:>10}"
                         f"{e['block_inputs'] / gib:>11.2f}{e['logits'] / gib:>11.2f}{e['naive_logits'] / gib:>10.2f}"
                         f"{total(e) / gib:>10.2f}")
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/activation_memory.py: the table for the released configs
    import sys
    from pathlib import Path

    from transformers import AutoConfig

    import tpo.models  # noqa: F401  registers LongVA

    root = Path(__file__).resolve().parent / "fixtures" / "released_configs"
    configs = {p.name: AutoConfig.from_pretrained(p) for p in sorted(root.iterdir()) if (p / "config.json").is_file()}
    print(table(configs, int(sys.argv[1]) if len(sys.argv) > 1 else 32))
