"""Which kernel runs the language model's attention under the shared-prefix block mask.

Every packed training forward passes a custom mask (``tpo/shared_prefix.py``), so the choice matters
(a model scored one row per answer, ``tpo/scoring.py``, passes only a padding mask):

- ``sdpa_no_cudnn`` (default): PyTorch SDPA with its cuDNN backend switched off. A masked input then
  runs the memory-efficient kernel (math where it cannot), an unmasked one (the vision encoder) flash.
  On Hopper, torch's CUDA-13 wheels prefer cuDNN attention for masked inputs, and cuDNN before 9.26
  returns NaN gradients for some masked lengths (pytorch/pytorch#196678, huggingface/trl#7181).
- ``sdpa``: PyTorch SDPA choosing its own kernel, cuDNN included (for a cuDNN known to be fixed).
- ``flex_attention``: FlexAttention with a ``BlockMask`` built from the pair's segments: no dense
  ``L x L`` mask is made, and fully masked blocks (the chosen answer, seen from the rejected one)
  are skipped. Only the language model uses it; the vision encoder keeps SDPA. It is compiled
  (``torch.compile``) at first use, for every family: a function registered with ``transformers``
  (:data:`FLEX`), so Qwen2.5-VL and Qwen3-VL, which do not declare flex support, take it too.

The cuDNN switch is process-wide (``torch.backends.cuda.enable_cudnn_sdp``), so it also holds in
backward and in activation-checkpoint recomputation, which run outside the forward's context.
"""

from __future__ import annotations

from typing import Literal

import torch

from tpo.errors import ConfigError

Attention = Literal["sdpa_no_cudnn", "sdpa", "flex_attention"]
KINDS = ("sdpa_no_cudnn", "sdpa", "flex_attention")
FLEX = "tpo_flex"  # the name our FlexAttention function is registered under (no support check by name)


def check_attention(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown attention {kind!r}; choose from {list(KINDS)} (see tpo/attention.py)")


def register_flex() -> None:
    """Make :data:`FLEX` a ``transformers`` attention implementation: transformers' own flex function,
    and its flex mask for the calls that pass a 2-D padding mask (generation), so those stay causal."""
    from transformers import AttentionInterface
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, flex_attention_mask

    AttentionInterface.register(FLEX, flex_attention_forward)
    AttentionMaskInterface.register(FLEX, flex_attention_mask)


def use_attention(model: torch.nn.Module, kind: str) -> None:
    """Set the language model of ``model`` to ``kind`` and the process's SDPA backends to match."""
    check_attention(kind)
    torch.backends.cuda.enable_cudnn_sdp(kind != "sdpa_no_cudnn")
    if kind == "flex_attention":
        register_flex()
        model.set_attn_implementation({"text_config": FLEX})
    elif text_attention(model) == FLEX:
        model.set_attn_implementation({"text_config": "sdpa"})


def text_attention(model: torch.nn.Module) -> str:
    """The attention implementation of the model's language model (``sdpa`` if it names none)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "_attn_implementation", None) or "sdpa"
