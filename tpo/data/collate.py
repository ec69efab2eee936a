"""Preference pairs -> one padded model batch, in the layout the model is scored in (``tpo/scoring.py``)."""

from __future__ import annotations

from typing import Callable

import torch

from tpo.models import ModelAdapter, PromptEncoding, pad_token_id
from tpo.shared_prefix import pack_pairs


def answer_ids(adapter: ModelAdapter, processor, item: dict, side: str) -> list[int]:
    """An item's ``side`` answer's tokens, ending with the end-of-turn token unless the answer was cut off."""
    return adapter.response_ids(processor, item[side], end=not item.get(f"{side}_truncated", False))


class PairCollator:
    """Items of :class:`tpo.data.datamodule.PreferenceDataset` -> the batch ``pack(prompts, chosen,
    rejected, pad_id)`` lays out, with the pairs' ``ids`` and whether each pair is ``counted`` (a
    validation repeat is not). Subclasses name their layout's ``pack``."""

    pack: Callable[[list[PromptEncoding], list[list[int]], list[list[int]], int], dict]

    def __init__(self, adapter: ModelAdapter, processor):
        self.adapter = adapter
        self.processor = processor
        self.pad_id = pad_token_id(processor)

    def __call__(self, items: list[dict]) -> dict:
        prompts = [self.adapter.encode_prompt(self.processor, it["clip"], it["question"]) for it in items]
        chosen, rejected = ([answer_ids(self.adapter, self.processor, it, side) for it in items]
                            for side in ("chosen", "rejected"))
        batch = self.pack(prompts, chosen, rejected, self.pad_id)
        counted = torch.tensor([it.get("counted", True) for it in items])
        return {**batch, "ids": [it["id"] for it in items], "counted": counted}


class SharedPrefixCollator(PairCollator):
    """One row ``[prompt][chosen][rejected]`` per pair: a :func:`tpo.shared_prefix.pack_pairs` batch
    (``inputs``, ``segments``)."""

    pack = staticmethod(pack_pairs)
