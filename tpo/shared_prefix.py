"""Shared-prefix scoring: one forward per preference pair instead of two.

Chosen and rejected answers share their prompt (32 frames of video tokens plus the question,
thousands of tokens) and differ in a few dozen to a few hundred response tokens. Each pair is
packed into one row ``[prompt][chosen][rejected]``; a block attention mask lets the rejected
tokens see the prompt but not the chosen ones, and their positions restart where the prompt
ends (for 3-D multimodal positions too). The video is encoded once, the prompt runs
once, gradients flow through it from both answers, and the LM head runs only from the first
response position on: no vocabulary logits for video and prompt tokens.

Why a packed row and not a KV-cache continuation: a row is one pure forward, so activation
checkpointing (which re-runs blocks in backward) and FSDP work unchanged, and a batch of pairs
is one call. It needs an attention implementation that takes a custom mask (``sdpa``, ``eager``).
"""

from __future__ import annotations

import inspect

import torch

from tpo.models import ModelAdapter, PromptEncoding

_NEW_TOKEN_VALUES = {"attention_mask": 1}  # per-token keys of response tokens; others are 0


def pack_pairs(prompts: list[PromptEncoding], chosen: list[list[int]], rejected: list[list[int]],
               pad_id: int) -> dict:
    """Rows ``[prompt][chosen][rejected]`` right-padded, vision tensors once per pair.

    Returns ``{"inputs": {...}, "segments": (B, 3) long tensor of (prompt, chosen, rejected) lengths}``.
    """
    rows, segments = [], []
    for prompt, c, r in zip(prompts, chosen, rejected):
        answers = torch.tensor(c + r, dtype=prompt.tokens["input_ids"].dtype)
        row = {}
        for key, value in prompt.tokens.items():
            tail = answers if key == "input_ids" else torch.full((len(answers),), _NEW_TOKEN_VALUES.get(key, 0),
                                                                 dtype=value.dtype)
            row[key] = torch.cat([value, tail])
        rows.append(row)
        segments.append([len(prompt.tokens["input_ids"]), len(c), len(r)])
    length = max(len(r["input_ids"]) for r in rows)
    inputs = {}
    for key in rows[0]:
        out = torch.full((len(rows), length), pad_id if key == "input_ids" else 0, dtype=rows[0][key].dtype)
        for i, row in enumerate(rows):
            out[i, : len(row[key])] = row[key]
        inputs[key] = out
    for key in prompts[0].vision:
        inputs[key] = torch.cat([p.vision[key] for p in prompts])
    return {"inputs": inputs, "segments": torch.tensor(segments)}


def pair_attention_mask(segments: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, 1, L, L)`` bool, True = may attend: causal, minus rejected→chosen; padding sees itself."""
    pos = torch.arange(length, device=segments.device)
    p, c, r = (segments[:, i, None] for i in range(3))
    chosen = (pos >= p) & (pos < p + c)  # (B, L)
    rejected = (pos >= p + c) & (pos < p + c + r)
    real = pos < p + c + r
    causal = pos[None, :, None] >= pos[None, None, :]
    blocked = rejected[:, :, None] & chosen[:, None, :]
    mask = causal & ~blocked & real[:, :, None] & real[:, None, :]
    return (mask | torch.eye(length, dtype=torch.bool, device=segments.device)).unsqueeze(1)


def _as_attention_mask(mask: torch.Tensor, model, dtype: torch.dtype) -> torch.Tensor:
    impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if impl == "sdpa":
        return mask
    if impl == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(f"shared-prefix scoring needs attn_implementation 'sdpa' or 'eager' (a custom mask); "
                     f"the model uses {impl!r}")


def pair_position_ids(adapter: ModelAdapter, model, inputs: dict, segments: torch.Tensor) -> torch.Tensor:
    """Positions as if chosen and rejected each followed the prompt alone."""
    length = inputs["input_ids"].shape[1]
    pos = torch.arange(length, device=segments.device).expand(len(segments), -1).clone()
    p, c, r = (segments[:, i, None] for i in range(3))
    in_rejected = (pos >= p + c) & (pos < p + c + r)
    rope_index = adapter.rope_index(model)
    if rope_index is None:
        return torch.where(in_rejected, pos - c, pos)
    # M-RoPE (Qwen-VL): 3-D positions from the model for [prompt][chosen], then text positions for
    # rejected continue from the prompt's last position exactly as the chosen ones do.
    names = inspect.signature(rope_index).parameters
    kwargs = {k: v for k, v in inputs.items() if k in names and k != "attention_mask"}
    two_d = (pos < p + c).long()  # rejected and padding left out of the 3-D computation
    positions, _ = rope_index(attention_mask=two_d, **kwargs)
    last_prompt = positions.gather(2, (p - 1).unsqueeze(0).expand(3, -1, -1).to(positions.device))  # (3, B, 1)
    rejected_pos = last_prompt + 1 + (pos - p - c).unsqueeze(0)
    return torch.where(in_rejected.unsqueeze(0), rejected_pos, positions)


def shared_prefix_logps(adapter: ModelAdapter, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of the responses: ``(2B,)`` each, chosen rows then rejected."""
    inputs, segments = batch["inputs"], batch["segments"].to(batch["inputs"]["input_ids"].device)
    ids = inputs["input_ids"]
    b, length = ids.shape
    first = int(segments[:, 0].min()) - 1  # the earliest position that predicts a response token
    model_inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
    mask = _as_attention_mask(pair_attention_mask(segments, length), model, model.dtype)
    out = model(**model_inputs, attention_mask=mask, position_ids=pair_position_ids(adapter, model, inputs, segments),
                logits_to_keep=torch.arange(first, length, device=ids.device), use_cache=False)
    logits = out.logits  # (B, length - first, V)
    rows, preds, targets, owner = [], [], [], []
    for i, (p, c, r) in enumerate(segments.tolist()):
        chosen_pred = list(range(p - 1, p + c - 1))
        rejected_pred = [p - 1] + list(range(p + c, p + c + r - 1))
        rows += [i] * (c + r)
        preds += chosen_pred + rejected_pred
        targets += list(range(p, p + c + r))
        owner += [i] * c + [b + i] * r
    device = logits.device
    rows_t, preds_t = torch.tensor(rows, device=device), torch.tensor(preds, device=device) - first
    target_ids = ids[rows_t, torch.tensor(targets, device=device)]
    token_logps = logits[rows_t, preds_t].float().log_softmax(-1).gather(-1, target_ids[:, None]).squeeze(-1)
    owner_t = torch.tensor(owner, device=device)
    sums = torch.zeros(2 * b, device=device, dtype=token_logps.dtype).index_add(0, owner_t, token_logps)
    counts = torch.zeros(2 * b, device=device, dtype=torch.long).index_add(0, owner_t, torch.ones_like(owner_t))
    return sums, counts
