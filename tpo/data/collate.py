"""Turning preference pairs into one padded model batch (chosen rows first, then rejected)."""

from __future__ import annotations

import torch

from tpo.models import IGNORE_INDEX, ModelAdapter, pad_token_id
from tpo.shared_prefix import pack_pairs


def pad_rows(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def labelled_sequence(prompt_tokens: dict[str, torch.Tensor], response: list[int]) -> dict[str, torch.Tensor]:
    """Prompt followed by response, with labels on the response tokens only."""
    n = len(response)
    response_t = torch.tensor(response, dtype=prompt_tokens["input_ids"].dtype)
    seq = {}
    for key, value in prompt_tokens.items():
        tail = response_t if key == "input_ids" else torch.full((n,), 1 if key == "attention_mask" else 0,
                                                                dtype=value.dtype)
        seq[key] = torch.cat([value, tail])
    seq["labels"] = torch.cat([torch.full_like(prompt_tokens["input_ids"], IGNORE_INDEX), response_t])
    return seq


class PairCollator:
    """The two-pass layout (prompt + chosen, prompt + rejected as separate rows), as TRL does it.

    Training uses :class:`SharedPrefixCollator`; this one is the reference the shared-prefix path
    is tested and benchmarked against.

    The batch holds ``2B`` rows: rows ``[0, B)`` are prompt + chosen, rows ``[B, 2B)`` the same
    prompts + rejected, with the vision tensors repeated to match. ``batch["inputs"]`` goes
    straight into the model; ``batch["labels"]`` is ``IGNORE_INDEX`` outside response tokens.
    """

    def __init__(self, adapter: ModelAdapter, processor):
        self.adapter = adapter
        self.processor = processor
        self.pad_id = pad_token_id(processor)

    def __call__(self, items: list[dict]) -> dict:
        prompts = [self.adapter.encode_prompt(self.processor, it["clip"], it["question"]) for it in items]
        rows = []
        for side in ("chosen", "rejected"):
            for prompt, it in zip(prompts, items):
                rows.append(labelled_sequence(prompt.tokens, self.answer_ids(it, side)))
        inputs = {k: pad_rows([r[k] for r in rows], self.pad_id if k == "input_ids" else 0) for k in rows[0] if k != "labels"}
        for key in prompts[0].vision:
            one_each = torch.cat([p.vision[key] for p in prompts])
            inputs[key] = torch.cat([one_each, one_each])
        return {"inputs": inputs, "labels": pad_rows([r["labels"] for r in rows], IGNORE_INDEX),
                "ids": [it["id"] for it in items]}

    def answer_ids(self, item: dict, side: str) -> list[int]:
        """An answer's tokens, ending with the end-of-turn token unless the answer was cut off."""
        return self.adapter.response_ids(self.processor, item[side], end=not item.get(f"{side}_truncated", False))


class SharedPrefixCollator(PairCollator):
    """One row per pair, ``[prompt][chosen][rejected]``, for :func:`tpo.shared_prefix.shared_prefix_logps`."""

    def __call__(self, items: list[dict]) -> dict:
        prompts = [self.adapter.encode_prompt(self.processor, it["clip"], it["question"]) for it in items]
        answers = {side: [self.answer_ids(it, side) for it in items]
                   for side in ("chosen", "rejected")}
        batch = pack_pairs(prompts, answers["chosen"], answers["rejected"], self.pad_id)
        counted = torch.tensor([it.get("counted", True) for it in items])
        return {**batch, "ids": [it["id"] for it in items], "counted": counted}
