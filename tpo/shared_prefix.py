"""Shared-prefix scoring: one forward per preference pair instead of two.

Chosen and rejected answers share their prompt (32 frames of video tokens plus the question,
thousands of tokens) and differ in a few dozen to a few hundred response tokens. Each pair is
packed into one row ``[prompt][chosen][rejected]``; a block attention mask lets the rejected
tokens see the prompt but not the chosen ones, and their positions restart where the prompt
ends (for 3-D multimodal positions too). The video is encoded once, the prompt runs
once, gradients flow through it from both answers, and the LM head runs only from the first
response position on: no vocabulary logits for video and prompt tokens.

The same layout holds any number of answers, ``[prompt][answer 1]...[answer N]`` with each answer
seeing the prompt and itself only (:func:`pack_answers`, :func:`answer_logps`): multiple-choice
likelihood scoring (``tpo/evaluate/likelihood.py``) packs the options of a question this way;
a preference pair is the case ``N = 2`` (:func:`pack_pairs`, :func:`shared_prefix_logps`).

Why a packed row and not a KV-cache continuation: a row is one pure forward, so activation
checkpointing (which re-runs blocks in backward) and FSDP work unchanged, and a batch of pairs
is one call. It needs an attention implementation that takes a custom mask (``sdpa``, ``eager``, or
FlexAttention with a block mask: ``tpo/attention.py``), and a model whose every layer that mixes
tokens obeys that mask: full attention. A model with recurrent layers is scored one row per answer
instead (``tpo/scoring.py`` decides).
"""

from __future__ import annotations

import functools
import inspect

import torch

from tpo.attention import FLEX, text_attention
from tpo.data.sequences import append_tokens, pad_token_rows
from tpo.loss import Pair
from tpo.models import ModelAdapter, PromptEncoding


def pack_answers(prompts: list[PromptEncoding], answers: list[list[list[int]]], pad_id: int) -> dict:
    """Rows ``[prompt][answer 1]...[answer N]`` right-padded, vision tensors once per prompt.

    ``answers[i]`` are the token ids of prompt ``i``'s answers; a prompt with fewer than the most
    answers gets empty ones after its own. Returns ``{"inputs": {...}, "segments": (B, 1 + N) long
    tensor of (prompt, answer 1, ..., answer N) lengths}``.
    """
    n = max(len(a) for a in answers)
    rows = [append_tokens(prompt.tokens, [t for answer in own for t in answer]) for prompt, own in zip(prompts, answers)]
    segments = [[len(prompt.tokens["input_ids"])] + [len(a) for a in own] + [0] * (n - len(own))
                for prompt, own in zip(prompts, answers)]
    inputs = pad_token_rows(rows, pad_id)
    for key in prompts[0].vision:
        inputs[key] = torch.cat([p.vision[key] for p in prompts])
    return {"inputs": inputs, "segments": torch.tensor(segments)}


def pack_pairs(prompts: list[PromptEncoding], chosen: list[list[int]], rejected: list[list[int]],
               pad_id: int) -> dict:
    """Rows ``[prompt][chosen][rejected]``: :func:`pack_answers` with two answers, segments ``(B, 3)``."""
    return pack_answers(prompts, [[c, r] for c, r in zip(chosen, rejected)], pad_id)


def _segment_of(segments: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, L)``: 0 for prompt tokens, ``k`` for tokens of answer ``k`` (1-based), ``1 + N`` for padding."""
    ends = segments.cumsum(1)
    pos = torch.arange(length, device=segments.device).expand(len(segments), -1).contiguous()
    return torch.searchsorted(ends.contiguous(), pos, right=True)


def _answer_starts(segments: torch.Tensor) -> torch.Tensor:
    """``(B, 2 + N)``: where each segment starts, then (as the padding's start) where the row ends."""
    return torch.nn.functional.pad(segments.cumsum(1), (1, 0))


def _may_attend(q, kv, query, key, padding: int):
    """The pair mask's rule for query position ``q`` in segment ``query`` and key position ``kv`` in
    segment ``key``: causal, an answer sees the prompt and itself only, padding sees itself."""
    allowed = (q >= kv) & ((key == 0) | (key == query)) & (query != padding) & (key != padding)
    return allowed | (q == kv)


def pair_attention_mask(segments: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, 1, L, L)`` bool, True = may attend: causal, each answer sees the prompt and itself only
    (not the answers before it); padding sees itself. ``segments``: ``(B, 1 + N)`` lengths."""
    segment = _segment_of(segments, length)
    pos = torch.arange(length, device=segments.device)
    mask = _may_attend(pos[None, :, None], pos[None, None, :], segment[:, :, None], segment[:, None, :],
                       segments.shape[1])
    return mask.unsqueeze(1)


@functools.cache
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def pair_block_mask(segments: torch.Tensor, length: int):
    """:func:`pair_attention_mask` as a FlexAttention ``BlockMask`` (``(B, 1)`` heads broadcast): the
    same rule evaluated per block, with no ``L x L`` tensor kept."""
    from torch.nn.attention.flex_attention import create_block_mask

    segment = _segment_of(segments, length)
    padding = segments.shape[1]

    def may_attend(b, h, q, kv):
        return _may_attend(q, kv, segment[b, q], segment[b, kv], padding)

    # Compiled, create_block_mask evaluates the rule block by block; eagerly it builds the dense mask
    # first (fine on CPU, where flex is for tests; torch 2.14's CPU compile of it is not reliable).
    build = _compiled_create_block_mask() if segments.is_cuda else create_block_mask
    return build(may_attend, len(segments), None, length, length, device=segments.device)


def _attention_mask(model, segments: torch.Tensor, length: int, dtype: torch.dtype):
    impl = text_attention(model)
    if impl == "sdpa":
        return pair_attention_mask(segments, length)
    if impl == "eager":
        mask = pair_attention_mask(segments, length)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    if impl == FLEX:
        return pair_block_mask(segments, length)
    raise ValueError(f"shared-prefix scoring needs a language-model attention that takes a custom mask ('sdpa', "
                     f"'eager' or tpo's flex_attention, see tpo/attention.py); the model uses {impl!r}")


def pair_position_ids(adapter: ModelAdapter, model, inputs: dict, segments: torch.Tensor) -> torch.Tensor:
    """Positions as if each answer followed the prompt alone (``segments``: ``(B, 1 + N)`` lengths)."""
    length = inputs["input_ids"].shape[1]
    pos = torch.arange(length, device=segments.device).expand(len(segments), -1).clone()
    p = segments[:, 0, None]
    segment = _segment_of(segments, length)
    own_start = _answer_starts(segments).gather(1, segment)  # where each token's segment starts
    in_later_answer = (segment >= 2) & (segment < segments.shape[1])  # answers 2..N (not padding)
    rope_index = adapter.rope_index(model)
    if rope_index is None:
        return torch.where(in_later_answer, pos - (own_start - p), pos)
    # M-RoPE (Qwen-VL): 3-D positions from the model for [prompt][answer 1], then text positions for
    # later answers continue from the prompt's last position exactly as the first answer's do.
    names = inspect.signature(rope_index).parameters
    kwargs = {k: v for k, v in inputs.items() if k in names and k != "attention_mask"}
    two_d = (segment <= 1).long()  # later answers and padding left out of the 3-D computation
    positions, _ = rope_index(attention_mask=two_d, **kwargs)
    last_prompt = positions.gather(2, (p - 1).unsqueeze(0).expand(3, -1, -1).to(positions.device))  # (3, B, 1)
    later_pos = last_prompt + 1 + (pos - own_start).unsqueeze(0).to(positions.device)
    return torch.where(in_later_answer.unsqueeze(0).to(positions.device), later_pos, positions)


def answer_logps(adapter: ModelAdapter, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of every answer of a :func:`pack_answers` batch: ``(B, N)``
    each (an empty answer: 0 and 0), from one forward over the packed rows."""
    inputs, segments = batch["inputs"], batch["segments"].to(batch["inputs"]["input_ids"].device)
    ids = inputs["input_ids"]
    b, length = ids.shape
    n = segments.shape[1] - 1
    first = int(segments[:, 0].min()) - 1  # the earliest position that predicts a response token
    model_inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
    mask = _attention_mask(model, segments, length, model.dtype)
    out = model(**model_inputs, attention_mask=mask, position_ids=pair_position_ids(adapter, model, inputs, segments),
                logits_to_keep=torch.arange(first, length, device=ids.device), use_cache=False)
    logits = out.logits  # (B, length - first, V)
    rows, preds, targets, owner = [], [], [], []
    for i, (p, *lengths) in enumerate(segments.tolist()):
        start = p
        for k, size in enumerate(lengths):
            # an answer's first token is predicted by the prompt's last position, the rest by itself
            preds += ([p - 1] + list(range(start, start + size - 1)))[:size]
            targets += list(range(start, start + size))
            rows += [i] * size
            owner += [i * n + k] * size
            start += size
    device = logits.device
    rows_t, preds_t = torch.tensor(rows, device=device), torch.tensor(preds, device=device) - first
    target_ids = ids[rows_t, torch.tensor(targets, device=device)]
    token_logps = logits[rows_t, preds_t].float().log_softmax(-1).gather(-1, target_ids[:, None]).squeeze(-1)
    owner_t = torch.tensor(owner, device=device)
    sums = torch.zeros(b * n, device=device, dtype=token_logps.dtype).index_add(0, owner_t, token_logps)
    counts = torch.zeros(b * n, device=device, dtype=torch.long).index_add(0, owner_t, torch.ones_like(owner_t))
    return sums.view(b, n), counts.view(b, n)


def shared_prefix_logps(adapter: ModelAdapter, model, batch: dict) -> tuple[Pair, Pair]:
    """Summed log-probs and token counts of the chosen and rejected responses of a
    :func:`pack_pairs` batch, ``(B,)`` each."""
    sums, counts = answer_logps(adapter, model, batch)
    return Pair(sums[:, 0], sums[:, 1]), Pair(counts[:, 0], counts[:, 1])
