"""What one training checkpoint and the Hugging Face export weigh at 7B, from the architecture.

LLaVA-Video-7B-Qwen2 is built on the meta device and given the recipe's trainable parts
(``language_model``, ``projector``). A Lightning checkpoint holds the fp32 master weights of every
parameter and AdamW's two fp32 moments of every trainable one; the export holds the weights in the
dtype the released checkpoint came in (bf16).

    python benchmarks/checkpoint_sizes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sharded_load_memory import llava_video_7b_on_meta  # noqa: E402

from tpo.clean_exit import run_and_exit  # noqa: E402
from tpo.models import get_adapter  # noqa: E402

GB = 1e9


def main() -> None:
    model = llava_video_7b_on_meta()
    get_adapter("llava_onevision").set_trainable(model, ("language_model", "projector"))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    checkpoint = 4 * total + 2 * 4 * trainable
    print(f"LLaVA-Video-7B-Qwen2: {total:.3e} parameters, {trainable:.3e} trainable (language model + projector)")
    print(f"one checkpoint (fp32 weights + AdamW moments): {checkpoint / GB:.0f} GB")
    print(f"  save_last: true writes it twice per save ({2 * checkpoint / GB:.0f} GB); save_last: link once")
    print(f"export: fp32 {4 * total / GB:.1f} GB, bf16 (the checkpoint's dtype) {2 * total / GB:.1f} GB")


if __name__ == "__main__":
    run_and_exit(main)
