"""Which layout a model's answers are scored in, decided once from its config.

The packed layout (:mod:`tpo.shared_prefix`: ``[prompt][answer 1]...[answer N]`` in one row, a block
mask keeping each answer away from the others) is exact only when a mask decides what every token
sees, that is when every language-model layer is attention: full, or sliding-window (whose window
:func:`tpo.shared_prefix.model_pair_masks` carries onto the packed row). A recurrent layer (Qwen3.5's
Gated DeltaNet linear attention, Mamba, ...) reads the row in order and carries its state from one
answer into the next. A model with any layer of another type is scored one row per answer instead
(:mod:`tpo.two_pass`), at the cost of running the video and prompt once per answer.

Every scorer follows this one decision: the training loss, the live and precomputed reference, the
datamodule's collator and likelihood scoring of multiple-choice options.
"""

from __future__ import annotations

import torch

from tpo import shared_prefix, two_pass
from tpo.data.collate import PairCollator, SharedPrefixCollator
from tpo.loss import Pair
from tpo.models import ModelAdapter, PromptEncoding

SHARED_PREFIX = "shared_prefix"
# Layer types whose mixing of tokens a packed row's masks express exactly.
MASKABLE_LAYER_TYPES = ("full_attention", "sliding_attention")
TWO_PASS = "two_pass"
_COLLATORS = {SHARED_PREFIX: SharedPrefixCollator, TWO_PASS: two_pass.TwoPassCollator}


def unmaskable_layer_types(config) -> list[str]:
    """The language model's layer types (``layer_types`` in its config) that the packed layout's mask
    cannot steer: all but :data:`MASKABLE_LAYER_TYPES`. A config without ``layer_types`` is all full
    attention."""
    text = config.get_text_config()
    return sorted({t for t in getattr(text, "layer_types", None) or () if t not in MASKABLE_LAYER_TYPES})


def layout_for(config) -> str:
    """``shared_prefix`` where packing is exact for the model, else ``two_pass``."""
    return TWO_PASS if unmaskable_layer_types(config) else SHARED_PREFIX


def describe_layout(config) -> str:
    """The layout and why, for a run's summary."""
    unmaskable = unmaskable_layer_types(config)
    if not unmaskable:
        return f"{SHARED_PREFIX} (one packed row per pair)"
    layers = ", ".join(unmaskable)
    return f"{TWO_PASS} (one row per answer: a packed row's mask cannot steer the model's {layers} layers)"


def pair_collator(layout: str, adapter: ModelAdapter, processor) -> PairCollator:
    """The collator that lays preference pairs out as ``layout``."""
    return _COLLATORS[layout](adapter, processor)


def pack_answers(layout: str, prompts: list[PromptEncoding], answers: list[list[list[int]]], pad_id: int) -> dict:
    """``answers[i]`` (token ids) after prompt ``i``, laid out as ``layout``."""
    if layout == SHARED_PREFIX:
        return shared_prefix.pack_answers(prompts, answers, pad_id)
    return two_pass.answer_rows(prompts, answers, pad_id)


def answer_logps(adapter: ModelAdapter, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts ``(B, N)`` of a :func:`pack_answers` batch of either layout
    (told apart by the batch itself: a packed one has ``segments``)."""
    if "segments" in batch:
        return shared_prefix.answer_logps(adapter, model, batch)
    return two_pass.per_answer_logps(model, batch)


def pair_logps(adapter: ModelAdapter, model, batch: dict) -> tuple[Pair, Pair]:
    """Summed log-probs and token counts of the chosen and rejected answers of a :func:`pair_collator`
    batch of either layout, ``(B,)`` each."""
    sums, counts = answer_logps(adapter, model, batch)
    return Pair(sums[:, 0], sums[:, 1]), Pair(counts[:, 0], counts[:, 1])
