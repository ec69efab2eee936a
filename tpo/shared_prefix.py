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
tokens obeys a mask. A model with recurrent layers is scored one row per answer instead
(``tpo/scoring.py`` decides).

A model whose masks are not plain causal ones (sliding-window layers, vision tokens attending
bidirectionally within their image: Gemma 3 and 4) gets its own masks, one per layer type as
``generate`` builds them, re-indexed onto the packed row (:func:`model_pair_masks`).
"""

from __future__ import annotations

import copy
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


def _same_row(query, key, padding: int):
    """Whether a query in segment ``query`` and a key in segment ``key`` share an ordinary row: the key
    lies in the prompt or the query's own answer, and neither is padding."""
    return ((key == 0) | (key == query)) & (query != padding) & (key != padding)


def _may_attend(q, kv, query, key, padding: int):
    """The pair mask's rule for query position ``q`` in segment ``query`` and key position ``kv`` in
    segment ``key``: causal, an answer sees the prompt and itself only, padding sees itself."""
    return ((q >= kv) & _same_row(query, key, padding)) | (q == kv)


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


def _block_mask(may_attend, batch: int, length: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    # Compiled, create_block_mask evaluates the rule block by block; eagerly it builds the dense mask
    # first (fine on CPU, where flex is for tests; torch 2.14's CPU compile of it is not reliable).
    build = _compiled_create_block_mask() if device.type == "cuda" else create_block_mask
    return build(may_attend, batch, None, length, length, device=device)


def pair_block_mask(segments: torch.Tensor, length: int):
    """:func:`pair_attention_mask` as a FlexAttention ``BlockMask`` (``(B, 1)`` heads broadcast): the
    same rule evaluated per block, with no ``L x L`` tensor kept."""
    segment = _segment_of(segments, length)
    padding = segments.shape[1]

    def may_attend(b, h, q, kv):
        return _may_attend(q, kv, segment[b, q], segment[b, kv], padding)

    return _block_mask(may_attend, len(segments), length, segments.device)


def _ordinary_index(segments: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, L)``: each token's index in its ordinary row ``[prompt][own answer]``: later answers restart
    where the prompt ends, the rest (padding too) keep theirs."""
    pos = torch.arange(length, device=segments.device).expand(len(segments), -1)
    segment = _segment_of(segments, length)
    own_start = _answer_starts(segments).gather(1, segment)  # where each token's segment starts
    in_later_answer = (segment >= 2) & (segment < segments.shape[1])  # answers 2..N (not padding)
    return torch.where(in_later_answer, pos - (own_start - segments[:, :1]), pos)


def mask_builder(model):
    """The model's own mask builder (the one ``generate`` uses: ``create_masks_for_generate``), or None
    for a model whose masks are plain causal ones: no builder of its own and only full-attention layers."""
    builder = getattr(model, "create_masks_for_generate", None)
    layer_types = set(getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"])
    if builder is None and layer_types != {"full_attention"}:
        from transformers.masking_utils import create_masks_for_generate as builder
    return builder


def _ordinary_masks(model, builder, inputs: dict, length: int) -> dict | torch.Tensor:
    """The model's own masks for ordinary rows of ``length`` tokens carrying the packed rows' per-token
    type ids (vision blocks lie in the prompt, which packing leaves in place): ``(B, 1, L, L)`` bool,
    True = may attend, in a dict by layer type where the model keys them so."""
    config = copy.deepcopy(model.config)
    # internal: the mask builders read the kernel from this private config field, and a copy of the config
    # set to eager gets a dense mask whatever kernel the model itself runs (no public setter on a config).
    config._attn_implementation = "eager"
    ids = inputs["input_ids"]
    types = {k: inputs[k] for k in ("token_type_ids", "mm_token_type_ids") if k in inputs}
    shape = torch.empty((len(ids), length, 0), device=ids.device)  # only its size and device are read
    masks = builder(config=config, inputs_embeds=shape, attention_mask=None, cache=None, position_ids=None,
                    is_first_iteration=True, **types)

    def as_bool(mask):  # None: a layer type that takes no mask (linear attention)
        if mask is None:
            return None
        return (mask if mask.dtype == torch.bool else mask == 0).expand(len(ids), 1, length, length)

    return {k: as_bool(m) for k, m in masks.items()} if isinstance(masks, dict) else as_bool(masks)


def model_pair_masks(model, builder, inputs: dict, segments: torch.Tensor) -> dict | torch.Tensor:
    """The model's ordinary masks moved onto the packed rows: a query may attend to a key in its own
    ordinary row exactly as the model lets their ordinary indices attend (causal or not, within a
    sliding window or not); padding sees itself. A dict by layer type where the model keys them so."""
    length = inputs["input_ids"].shape[1]
    index = _ordinary_index(segments, length)
    segment = _segment_of(segments, length)
    same_row = _same_row(segment[:, :, None], segment[:, None, :], segments.shape[1])
    diagonal = torch.eye(length, dtype=torch.bool, device=segments.device)
    rows, cols = index[:, :, None].expand(-1, -1, length), index[:, None, :].expand(-1, length, -1)

    def packed(mask):
        if mask is None:
            return None
        return ((mask[:, 0].gather(1, rows).gather(2, cols) & same_row) | diagonal).unsqueeze(1)

    masks = _ordinary_masks(model, builder, inputs, length)
    return {k: packed(m) for k, m in masks.items()} if isinstance(masks, dict) else packed(masks)


def _kernel_mask(impl: str, mask: torch.Tensor, dtype: torch.dtype):
    """A ``(B, 1, L, L)`` bool mask in the form the attention kernel ``impl`` takes."""
    if impl == "sdpa":
        return mask
    if impl == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    dense = mask[:, 0]
    return _block_mask(lambda b, h, q, kv: dense[b, q, kv], len(dense), dense.shape[-1], dense.device)


def _attention_mask(model, inputs: dict, segments: torch.Tensor, dtype: torch.dtype):
    impl = text_attention(model)
    if impl not in ("sdpa", "eager", FLEX):
        raise ValueError(f"shared-prefix scoring needs a language-model attention that takes a custom mask "
                         f"('sdpa', 'eager' or tpo's flex_attention, see tpo/attention.py); the model uses {impl!r}")
    builder = mask_builder(model)
    if builder is not None:
        masks = model_pair_masks(model, builder, inputs, segments)
        if isinstance(masks, dict):
            return {k: None if m is None else _kernel_mask(impl, m, dtype) for k, m in masks.items()}
        return _kernel_mask(impl, masks, dtype)
    length = inputs["input_ids"].shape[1]
    if impl == FLEX:
        return pair_block_mask(segments, length)
    return _kernel_mask(impl, pair_attention_mask(segments, length), dtype)


def pair_position_ids(adapter: ModelAdapter, model, inputs: dict, segments: torch.Tensor) -> torch.Tensor:
    """Positions as if each answer followed the prompt alone (``segments``: ``(B, 1 + N)`` lengths)."""
    length = inputs["input_ids"].shape[1]
    index = _ordinary_index(segments, length)
    rope_index = adapter.rope_index(model)
    if rope_index is None:
        return index
    # M-RoPE (Qwen-VL): 3-D positions from the model for [prompt][answer 1], then text positions for
    # later answers continue from the prompt's last position exactly as the first answer's do.
    p = segments[:, 0, None]
    segment = _segment_of(segments, length)
    in_later_answer = (segment >= 2) & (segment < segments.shape[1])  # answers 2..N (not padding)
    names = inspect.signature(rope_index).parameters
    kwargs = {k: v for k, v in inputs.items() if k in names and k != "attention_mask"}
    two_d = (segment <= 1).long()  # later answers and padding left out of the 3-D computation
    positions, _ = rope_index(attention_mask=two_d, **kwargs)
    last_prompt = positions.gather(2, (p - 1).unsqueeze(0).expand(3, -1, -1).to(positions.device))  # (3, B, 1)
    later_pos = last_prompt + 1 + (index - p).unsqueeze(0).to(positions.device)  # steps into its own answer
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
    mask = _attention_mask(model, inputs, segments, model.dtype)
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
