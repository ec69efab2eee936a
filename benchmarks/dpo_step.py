"""One TPO training step three ways, on the same model, data and batch.

- ``ours``: one shared-prefix forward per pair (``tpo/shared_prefix.py``) and reference log-probs
  computed once beforehand (``tpo precompute-ref``): no reference model in memory;
- ``ours_live_ref``: the same with a live reference model (also shared-prefix), for the breakdown;
- ``ours_flex``: ``ours`` with ``model.attention: flex_attention`` (a block mask; GPU only, it is
  compiled in the warm-up steps);
- ``naive``: the common (TRL-style) step: policy on prompt+chosen and prompt+rejected as two
  rows, full-vocabulary logits everywhere, then a live reference model on both rows again.

TRL's ``DPOTrainer`` is not measured: ``trl`` is not a dependency, and making its trainer take the
same video tensors (``pixel_values_videos``, ``video_grid_thw``) and batch was not attempted.

Shapes follow the paper: 32 frames with the family's real tokens per frame (LLaVA-OneVision:
196 after 2x2 pooling), a ~60-token question, responses of 50-300 tokens. ``--shape cpu`` is a
narrow random model of that token count; ``--shape onevision-0.5b`` has LLaVA-OneVision-0.5B's
shape (SigLIP-so400m + Qwen2-0.5B, random weights) for a GPU. Each variant runs in its own
process so its peak memory (CUDA peak, or max RSS on CPU) is its own.

    python benchmarks/dpo_step.py [--quick] [--shape cpu|onevision-0.5b] [--steps N] [--variants naive ours ...]

Every variant but ``ours_flex`` runs SDPA as training does by default (``sdpa_no_cudnn``).

The last line is ``speedup_vs_naive=<x> memory_vs_naive=<y>``: the last variant against the first.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from tpo.clean_exit import run_and_exit

SHAPES = {
    # LLaVA-OneVision layout; 224 px / 8 px patches = 28x28, pooled 2x2 -> 196 tokens per frame.
    "cpu": dict(vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                            image_size=224, patch_size=8),
                # vocab / (12 * hidden * layers) ~ 0.67, close to Qwen2-0.5B's 0.59: the LM head weighs
                # about as much against the transformer blocks as in the real model.
                text=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=8192)),
    "onevision-0.5b": dict(vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                       num_attention_heads=16, image_size=384, patch_size=14),
                           text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                     num_attention_heads=14, num_key_value_heads=2, vocab_size=151936)),
}
VIDEO_TOKEN = 5
VARIANTS = ("naive", "ours_live_ref", "ours", "ours_flex")


def build_model(shape: str, dtype: torch.dtype):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    spec = SHAPES[shape]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**spec["vision"]),
        text_config=Qwen2Config(**spec["text"], max_position_embeddings=32768),
        video_token_index=VIDEO_TOKEN, image_token_index=VIDEO_TOKEN + 1, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[spec["vision"]["image_size"]] * 2])
    model = LlavaOnevisionForConditionalGeneration(config).to(dtype)
    model.set_attn_implementation("sdpa")
    return model


def make_pairs(model, frames: int, batch: int, seed: int = 0) -> list[dict]:
    """Prompt encodings (video tokens + ~60-token question) and 50-300-token responses."""
    from tpo.models import PromptEncoding

    g = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, frames, 3, size, size, generator=g)
    per_frame = (size // model.config.vision_config.patch_size + 1) // 2
    video_tokens = frames * per_frame * per_frame + 1  # LLaVA-OneVision appends one newline token per video
    vocab = model.config.text_config.vocab_size
    pairs = []
    for _ in range(batch):
        question = torch.randint(10, vocab, (60,), generator=g)
        ids = torch.cat([torch.tensor([1, 2]), torch.full((video_tokens,), VIDEO_TOKEN), question, torch.tensor([3, 4])])
        prompt = PromptEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                {"pixel_values_videos": pixels.to(model.dtype)})
        chosen, rejected = (torch.randint(10, vocab, (int(n),), generator=g).tolist()
                            for n in torch.randint(50, 301, (2,), generator=g))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def naive_batch(pairs: list[dict]) -> dict:
    from tpo.two_pass import two_pass_batch

    return two_pass_batch([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs], 0)


def packed_batch(pairs: list[dict]) -> dict:
    from tpo.shared_prefix import pack_pairs

    return pack_pairs([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs], 0)


def to(batch: dict, device) -> dict:
    """The batch's tensors on ``device`` (nested dicts too); other entries (counts) as they are."""
    def moved(v):
        return to(v, device) if isinstance(v, dict) else v.to(device) if isinstance(v, torch.Tensor) else v
    return {k: moved(v) for k, v in batch.items()}


def run_variant(variant: str, args) -> dict:
    from tpo.attention import use_attention
    from tpo.loss import Pair, tpo_loss
    from tpo.models import get_adapter
    from tpo.shared_prefix import shared_prefix_logps
    from tpo.two_pass import response_logps

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attention = "flex_attention" if variant == "ours_flex" else "sdpa_no_cudnn"
    torch.manual_seed(0)
    policy = build_model(args.shape, dtype).to(device).train()
    use_attention(policy, attention)
    adapter = get_adapter("llava_onevision")
    pairs = make_pairs(policy, args.frames, args.batch)
    n = len(pairs)
    reference, precomputed = None, variant in ("ours", "ours_flex")
    if not precomputed:
        torch.manual_seed(0)
        reference = build_model(args.shape, dtype).to(device).eval().requires_grad_(False)
        use_attention(reference, attention)
    batch = to(naive_batch(pairs) if variant == "naive" else packed_batch(pairs), device)
    if precomputed:  # what `tpo precompute-ref` stores, computed once outside the timed steps
        with torch.no_grad():
            ref_logps = shared_prefix_logps(adapter, policy, batch)[0]
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)

    def logps(model, b):
        if variant == "naive":  # full-vocabulary logits at every position of both rows
            sums, counts = response_logps(model(**b["inputs"], use_cache=False).logits, b["labels"])
            return Pair(*sums.view(2, -1)), Pair(*counts.view(2, -1))
        return shared_prefix_logps(adapter, model, b)

    def step():
        policy_logps, tokens = logps(policy, batch)
        if precomputed:
            ref = ref_logps
        else:
            with torch.no_grad():
                ref = logps(reference, batch)[0]
        out = tpo_loss(policy_logps, ref, tokens, beta=0.1, alpha=1.0)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    tokens = sum(len(p["prompt"].tokens["input_ids"]) + len(p["chosen"]) + len(p["rejected"]) for p in pairs)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    median = statistics.median(times)
    result = {"variant": variant, "device": str(device), "step_s": median, "samples_per_s": n / median,
              "tokens_per_s": tokens / median, "peak_bytes": peak, "tokens_per_pair": tokens / n,
              "prompt_tokens": len(pairs[0]["prompt"].tokens["input_ids"])}
    if device.type == "cuda":
        lm_params = sum(p.numel() for p in policy.model.language_model.parameters())
        flops = 6 * lm_params * tokens + (2 * lm_params * tokens if not precomputed else 0)
        peak_flops = float(args.peak_tflops) * 1e12
        result["mfu"] = flops / median / peak_flops  # useful LM FLOPs (unique tokens) per second / peak
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="preference pairs per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 frames, 1 warm-up and 2 timed steps")
    parser.add_argument("--peak-tflops", default="989", help="accelerator peak for MFU (H100 bf16 dense: 989)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["naive", "ours_live_ref", "ours"],
                        help="the first is the baseline of the ratios")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.quick:
        args.frames, args.warmup, args.steps = 8, 1, 2
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"variant {variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results[args.variants[0]]
    print(f"device {base['device']}, shape {args.shape}, {args.frames} frames, {args.batch} pair(s)/step, "
          f"prompt {base['prompt_tokens']} tokens, {base['tokens_per_pair']:.0f} unique tokens/pair, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'variant':15}{'step s':>9}{'pairs/s':>9}{'tokens/s':>10}{'peak MiB':>10}{'speed x':>9}{'mem x':>7}"
          + ("{:>7}".format("MFU") if "mfu" in base else ""))
    for name, r in results.items():
        print(f"{name:15}{r['step_s']:>9.3f}{r['samples_per_s']:>9.3f}{r['tokens_per_s']:>10.0f}"
              f"{r['peak_bytes'] / 2**20:>10.0f}{r['samples_per_s'] / base['samples_per_s']:>9.2f}"
              f"{r['peak_bytes'] / base['peak_bytes']:>7.2f}" + (f"{r['mfu']:>7.1%}" if "mfu" in r else ""))
    print("TRL DPOTrainer: not measured (trl is not a dependency; feeding it these video inputs was not attempted)")
    last = results[args.variants[-1]]
    print(f"speedup_vs_{args.variants[0]}={last['samples_per_s'] / base['samples_per_s']:.2f} "
          f"memory_vs_{args.variants[0]}={last['peak_bytes'] / base['peak_bytes']:.2f}")


if __name__ == "__main__":
    run_and_exit(main)
